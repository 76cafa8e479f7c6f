"""Several processes train what one process trains: the real trainer under `torchrun` (gloo, CPU).

A tiny Llama on the bundled sample, fp32, one thread per process. Two processes with the same seed
must end where one process ends, within SCORE_ATOL on the saved models' scores (see there), after the
same number of optimizer steps, with exactly one model directory and metrics file, written by rank 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gateway.formats import load_pairs
from tests import tiny
from trainer.config import SAMPLE_DATA, TrainConfig
from trainer.data import collate, tokenize_pairs
from trainer.distributed import (
    Distributed,
    LaunchEnv,
    Shard,
    launch_env,
    pooled_stats,
    resolve_device,
    shard,
    stat_sums,
)
from trainer.evaluate import load_reward_model, score_conversations
from trainer.objective import bradley_terry_loss
from trainer.train import train

ROOT = Path(__file__).resolve().parents[2]
# Measured on these runs: the largest score difference between the one- and two-process models was
# 3.4e-5 (the TEST scores spread with std 0.14). The gradients agree to float rounding (the shard test
# below: 2e-6 relative), but Adam divides by sqrt(v), so a parameter whose gradient is near zero can
# step by up to lr on a rounding difference: weights differ by up to 5e-4 in a few embedding entries,
# while the scores stay close. 3e-4 leaves a margin of about 10.
SCORE_ATOL = 3e-4
# 33 pairs in micro-batches of 8: the last batch holds one pair, so rank 1 runs a zero-weight stand-in;
# with grad_accum 2 the first micro-batch of each step accumulates without an all-reduce.
ARGS = {
    "batch_size": "8",
    "max_pairs": 33,
    "epochs": 2,
    "grad_accum": 2,
    "learning_rate": 2e-3,
    "precision": "fp32",
    "max_length": 1024,
    "threads": 1,
    "device": "cpu",
    "seed": 3,
    "progress": False,
}


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_base(tmp_path_factory.mktemp("base") / "llama", "llama")


@pytest.fixture(scope="module")
def single(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process reference, trained in this process (its thread count restored after)."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("single") / "rm"
    try:
        train(TrainConfig(base_model=str(llama_base), output=str(out), **ARGS))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    return out


def flags(options: dict[str, object]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return out


TORCHRUN = ("torch.distributed.run", "--standalone", "--nproc-per-node", "2")
# --multi_gpu is accelerate's torchrun path; with no GPU the trainer takes gloo on the CPU.
ACCELERATE = ("accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1")
ACCELERATE += ("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0")


def launch(*args: str, launcher: tuple[str, ...] = TORCHRUN) -> subprocess.Popen[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        # --preset none: the field defaults, as the in-process reference's TrainConfig has them
        [sys.executable, "-m", *launcher, "-m", "trainer", "train", "--preset", "none", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_two(*args: str, launcher: tuple[str, ...] = TORCHRUN) -> str:
    proc = launch(*args, launcher=launcher)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return out


def scores(directory: Path) -> torch.Tensor:
    pairs = load_pairs(SAMPLE_DATA).split("TEST")
    model, tok, _ = load_reward_model(directory, "cpu")
    conversations = [p.chosen_conversation for p in pairs] + [p.rejected_conversation for p in pairs]
    return torch.tensor(score_conversations(model, tok, conversations, 1024))


def metric_rows(directory: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def assert_same_training(one: Path, two: Path) -> None:
    a, b = json.loads((one / "rewardgate.json").read_text()), json.loads((two / "rewardgate.json").read_text())
    assert a["training"]["steps"] == b["training"]["steps"] == 2 * 3  # ceil(ceil(33 / 8) / 2) per epoch
    assert (a["config"]["processes"], b["config"]["processes"]) == (1, 2)
    assert a["metrics"]["test"]["accuracy"] == b["metrics"]["test"]["accuracy"]
    difference = (scores(one) - scores(two)).abs().max().item()
    assert difference <= SCORE_ATOL, difference
    # The logged batch metrics are the global batch's, as one process logs them.
    for row_a, row_b in zip(metric_rows(one), metric_rows(two), strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], abs=2e-4), (key, row_a, row_b)


def test_two_ddp_processes_train_the_model_one_process_trains(single: Path, llama_base: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    out = run_two(*flags(ARGS), "--base-model", str(llama_base), "--models-dir", str(models), "--slug", "rm")
    # Both ranks chose version v1 before rank 0 created it; rank 1 wrote nothing and printed no log.
    assert sorted(p.name for p in (models / "rm").iterdir()) == ["v1"]
    two = models / "rm" / "v1"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in single.iterdir())
    assert out.count("config: ") == 1 and out.count("data: ") == 1
    assert_same_training(single, two)


def test_two_fsdp_processes_train_the_model_one_process_trains(single: Path, llama_base: Path, tmp_path: Path) -> None:
    two = tmp_path / "rm"
    run_two(*flags(ARGS), "--base-model", str(llama_base), "--output", str(two), "--distributed-strategy", "fsdp")
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in single.iterdir())
    assert_same_training(single, two)


def test_accelerate_launch_runs_the_same_data_parallel_training(single: Path, llama_base: Path, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    two = tmp_path / "rm"
    out = run_two(*flags(ARGS), "--base-model", str(llama_base), "--output", str(two), launcher=ACCELERATE)
    assert out.count("config: ") == 1
    assert_same_training(single, two)


@pytest.mark.slow  # about 25 s: three launches
def test_a_killed_two_process_run_resumes_and_ends_where_an_uninterrupted_one_ends(
    llama_base: Path, tmp_path: Path
) -> None:
    options = ARGS | {"max_pairs": 32, "batch_size": "4", "grad_accum": 1, "epochs": 6, "save_steps": 5}
    args = [*flags(options), "--base-model", str(llama_base)]
    killed = tmp_path / "killed"
    proc = launch(*args, "--output", str(killed))
    deadline = time.monotonic() + 120
    while not list((killed / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (killed / "rewardgate.json").exists()

    out = run_two(*args, "--output", str(killed), "--resume")
    assert out.count("resumed from step-") == 1
    straight = tmp_path / "straight"
    run_two(*args, "--output", str(straight))
    a, b = json.loads((killed / "rewardgate.json").read_text()), json.loads((straight / "rewardgate.json").read_text())
    assert a["training"]["steps"] == b["training"]["steps"] == 6 * 8
    assert not (killed / "checkpoints").exists()
    # The same processes in the same order: a resumed run matches to rounding, as in one process.
    assert torch.allclose(scores(killed), scores(straight), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the rules, in one process


def test_shards_cover_each_batch_once_and_weights_average_to_the_batch_mean() -> None:
    for size in (1, 2, 5, 8):
        batch = list(range(100, 100 + size))
        shards = [shard(batch, rank, 2) for rank in range(2)]
        assert sorted(i for s in shards if s.counted for i in s.pairs) == batch
        assert sum(s.counted for s in shards) == size
        assert sum(s.weight for s in shards) == pytest.approx(2.0)  # DDP divides the sum by 2
    assert shard([7], 1, 2) == Shard([7], 0.0, 0)  # a stand-in pair, weighted out
    assert shard([1, 2, 3], 0, 1) == Shard([1, 2, 3], 1.0, 3)


def test_the_shard_rule_gives_the_gradient_of_the_whole_batch() -> None:
    tok = tiny.chat_tokenizer()
    model = tiny.llama_reward_model(tok).train()
    examples, _ = tokenize_pairs(load_pairs(SAMPLE_DATA).split("TRAIN")[:5], tok, 1024)

    def gradient(indices: list[int], weight: float) -> torch.Tensor:
        from gateway.formats import pool_rewards

        model.zero_grad()
        batch = collate([examples[i] for i in indices], tok.pad_token_id)
        rewards = pool_rewards(model, batch["input_ids"], batch["attention_mask"])
        n = len(indices)
        loss, _ = bradley_terry_loss(rewards[:n], rewards[n:], batch["margin"], 0.01)
        (loss * weight).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = gradient(list(range(5)), 1.0)
    parts = [shard(range(5), rank, 2) for rank in range(2)]
    averaged = sum(gradient(p.pairs, p.weight) for p in parts) / 2  # what DDP computes
    # Measured 1.6e-6: float rounding (single entries near zero differ more; see SCORE_ATOL).
    assert torch.linalg.norm(averaged - whole) <= 1e-5 * torch.linalg.norm(whole)


def test_pooled_batch_metrics_equal_the_whole_batch_metrics() -> None:
    torch.manual_seed(0)
    chosen, rejected = torch.randn(5), torch.randn(5)
    _, whole = bradley_terry_loss(chosen, rejected)
    keys = sorted(whole)
    sums = [0.0] * (len(keys) + 2)
    for rank in range(2):
        part = shard(range(5), rank, 2)
        _, stats = bradley_terry_loss(chosen[part.pairs], rejected[part.pairs])
        sums = [a + b for a, b in zip(sums, stat_sums(stats, part.counted, keys), strict=True)]
    assert pooled_stats(sums, keys) == pytest.approx(whole, rel=1e-6)


def test_the_launch_environment_and_the_device_of_each_rank() -> None:
    assert launch_env({}) == LaunchEnv(0, 0, 1)
    env = launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert env == LaunchEnv(3, 1, 4)
    with pytest.raises(ValueError):
        launch_env({"WORLD_SIZE": "2", "RANK": "2"})
    assert resolve_device("auto", env, cuda_available=True) == torch.device("cuda", 1)
    assert resolve_device("auto", env, cuda_available=False) == torch.device("cpu")
    assert resolve_device("cuda:0", env, cuda_available=True) == torch.device("cuda", 0)
    assert resolve_device("auto", LaunchEnv(), cuda_available=True) == torch.device("cuda")


def test_one_process_is_the_identity() -> None:
    dist = Distributed(torch.device("cpu"))
    model = torch.nn.Linear(2, 1)
    stats = {"loss": 0.5}
    assert dist.is_main and not dist.fsdp
    assert dist.wrap(model) is model and dist.scorer(model, model) is model
    assert dist.reduce_stats(stats, 1.0) is stats and dist.agree(1.5) == 1.5 and dist.min_over_ranks(3) == 3
    state = model.state_dict()
    assert dist.gathered(state) is state and dist.sharded_like(state, state) is state


def test_fsdp_with_lora_is_refused() -> None:
    with pytest.raises(ValueError, match="lora"):
        TrainConfig(lora=True, distributed_strategy="fsdp")
