"""End to end on tiny in-memory-built models and the bundled sample data: no hub, seconds each."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gateway.formats import load_pairs, pool_rewards, render_conversation
from gateway.formats import load_rated as load_rated_file
from tests import tiny
from trainer.config import SAMPLE_DATA, TrainConfig
from trainer.evaluate import PairMetrics, load_reward_model, score_conversations
from trainer.train import eval_row, train, train_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_base(tmp_path_factory.mktemp("base") / "llama", "llama")


def config(base: Path, output: Path, **overrides: object) -> TrainConfig:
    options: dict[str, object] = {
        "base_model": str(base),
        "output": str(output),
        "batch_size": "8",
        "learning_rate": 2e-3,
        "max_pairs": 96,
        "epochs": 2,
        "progress": False,
        "precision": "fp32",
        "max_length": 1024,
    }
    return TrainConfig(**(options | overrides))  # type: ignore[arg-type]


def test_train_writes_the_servable_directory_of_contract_2(llama_base: Path, tmp_path: Path) -> None:
    result = train(config(llama_base, tmp_path / "support-rm"))
    out = result.output
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "rewardgate.json",
        "metrics.jsonl",
        "training_curves.png",
        "train_config.json",
    ):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    meta = json.loads((out / "rewardgate.json").read_text())
    assert meta["slug"] == "support-rm" and meta["version"] == "v1"
    assert meta["architecture"] == "LlamaForSequenceClassification"
    assert meta["data"]["sha256"] and meta["data"]["train_pairs"] == 96 and meta["data"]["test_pairs"] == 42
    assert meta["metrics"]["test"]["count"] == 42
    assert meta["reward_stats"]["count"] == 84 and meta["reward_stats"]["std"] > 0
    histogram = meta["reward_stats"]["histogram"]  # the console draws it
    assert sum(histogram["counts"]) == 84 and len(histogram["edges"]) == len(histogram["counts"]) + 1
    assert meta["config"]["learning_rate"] == 2e-3 and meta["config"]["resolved_batch_size"] == 8
    assert result.steps == 2 * 12
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval"} == {r["kind"] for r in rows}


def test_training_learns_the_sample_preferences(llama_base: Path, tmp_path: Path) -> None:
    cfg = config(llama_base, tmp_path / "m", max_pairs=160, epochs=3)
    pairs = load_pairs(SAMPLE_DATA).split("TRAIN")[:64]
    model, tok, _ = load_reward_model(llama_base, "cpu")
    tok.pad_token = tok.pad_token or tok.eos_token

    def train_accuracy(m: object) -> float:
        chosen = score_conversations(m, tok, [p.chosen_conversation for p in pairs], 1024)
        rejected = score_conversations(m, tok, [p.rejected_conversation for p in pairs], 1024)
        return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)

    before = train_accuracy(model)
    result = train(cfg)
    trained, _, _ = load_reward_model(result.output, "cpu")
    after = train_accuracy(trained)
    assert after >= 0.8 and after > before + 0.2, (before, after)


def test_saved_model_scores_the_same_in_plain_transformers(llama_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = train(config(llama_base, tmp_path / "m", epochs=1, max_pairs=16)).output
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    pair = load_pairs(SAMPLE_DATA).pairs[0]
    ids = torch.tensor([render_conversation(tok, pair.chosen_conversation, 1024).input_ids])
    with torch.no_grad():
        ours = float(pool_rewards(model, ids, torch.ones_like(ids))[0])
        theirs = float(model(input_ids=ids).logits[0, 0])
    assert ours == pytest.approx(theirs, abs=1e-5)  # this render ends in "\n", not the pad (== eos) token


def test_models_dir_assigns_the_next_version_and_refuses_to_overwrite(llama_base: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        config(llama_base, tmp_path, epochs=1, max_pairs=8), output="", models_dir=str(tmp_path), slug="support-rm"
    )
    assert train(cfg).output == tmp_path / "support-rm" / "v1"
    second = train(cfg).output
    assert second == tmp_path / "support-rm" / "v2"
    assert json.loads((second / "rewardgate.json").read_text())["version"] == "v2"
    with pytest.raises(FileExistsError):
        train(config(llama_base, second, epochs=1, max_pairs=8))


def test_lora_training_saves_a_merged_plain_model(llama_base: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    out = train(config(llama_base, tmp_path / "lora", lora=True, lora_r=4, epochs=1, max_pairs=16)).output
    assert not (out / "adapter_config.json").exists()
    model, _, meta = load_reward_model(out, "cpu")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert meta["config"]["lora"] is True


def test_frozen_layers_do_not_change(llama_base: Path, tmp_path: Path) -> None:
    out = train(config(llama_base, tmp_path / "frozen", freeze_embeddings=True, freeze_layers=1, epochs=1)).output
    before, _, _ = load_reward_model(llama_base, "cpu")
    after, _, _ = load_reward_model(out, "cpu")
    assert torch.equal(before.model.embed_tokens.weight, after.model.embed_tokens.weight)
    assert torch.equal(before.model.layers[0].mlp.up_proj.weight, after.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(before.model.layers[1].mlp.up_proj.weight, after.model.layers[1].mlp.up_proj.weight)


def run_cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )  # type: ignore[call-overload]


def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(llama_base: Path, tmp_path: Path) -> None:
    args = [
        "train",
        "--base-model",
        str(llama_base),
        "--batch-size",
        "4",
        "--max-pairs",
        "32",
        "--epochs",
        "6",
        "--learning-rate",
        "1e-3",
        "--precision",
        "fp32",
        "--save-steps",
        "5",
        "--no-progress",
        "--max-length",
        "1024",
    ]
    killed = tmp_path / "killed"
    proc = run_cli(*args, "--output", str(killed))
    deadline = time.monotonic() + 120
    while not list((killed / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "rewardgate.json").exists()

    resumed = run_cli(*args, "--output", str(killed), "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from step-" in out
    straight = run_cli(*args, "--output", str(tmp_path / "straight"))
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    a, _, meta_a = load_reward_model(killed, "cpu")
    b, _, meta_b = load_reward_model(tmp_path / "straight", "cpu")
    assert meta_a["training"]["steps"] == meta_b["training"]["steps"] == 6 * 8
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), name
    assert meta_a["metrics"]["test"]["accuracy"] == meta_b["metrics"]["test"]["accuracy"]


class SteppingClock:
    """`time` for trainer.train whose perf_counter advances 5 ms per read: the budget logic sees the same steps
    whatever the machine's load. With a real clock this test failed on busy cores: the budget then fitted fewer
    steps than the warmup planned for the whole run (5 % of 800), and the learning rate never decayed."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.005
        return self.now

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_a_time_budget_stops_early_with_the_learning_rate_decayed(
    llama_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.train

    monkeypatch.setattr(trainer.train, "time", SteppingClock())
    result = train(config(llama_base, tmp_path / "budget", epochs=200, max_pairs=32, time_budget_s=0.6, log_every=1))
    meta = json.loads((result.output / "rewardgate.json").read_text())
    assert meta["training"]["stopped_early"] is True
    assert result.steps < 200 * 4
    rows = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    assert 30 <= len(lrs) <= 45  # 0.6 s of 15 ms steps (three clock reads each)
    assert max(lrs) > 0.8 * 2e-3  # the warmup, fitted to the budget too, reached the peak
    assert lrs[-1] < 0.2 * 2e-3  # and the cosine decay ran to (nearly) zero inside the budget


def test_a_train_row_averages_the_window_and_an_eval_row_carries_the_metrics() -> None:
    window = [{"loss": 0.5, "accuracy": 1.0}, {"loss": 0.25, "accuracy": 0.0}, {"loss": 0.2, "accuracy": 0.5}]
    row = train_row(window, step=30, epoch=1, lr=1e-4, elapsed_s=12.3456)
    logged = {"kind": "train", "step": 30, "epoch": 1, "lr": 1e-4, "elapsed_s": 12.35}
    assert row == {"loss": 0.31667, "accuracy": 0.5} | logged
    assert list(row)[:2] == ["loss", "accuracy"]  # the batch metrics first, as metrics.jsonl always had them
    metrics = PairMetrics(4, 0.75, 0.5, 0.0, 1.0, 0.5, (1.0, 0.0))
    assert eval_row(7, metrics) == {"kind": "eval", "step": 7, **metrics.to_dict()}


# ---------------------------------------------------------------- rated responses


def rated_file(tmp_path: Path, labels: str) -> Path:
    from tests.scripts.test_make_rated_data import load_script

    path = tmp_path / f"{labels}.jsonl"
    rows = load_script().rated_rows(labels=labels)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("labels", "loss"), [("thumbs", "binary_cross_entropy"), ("stars", "regression")])
def test_rated_responses_train_a_pointwise_model_with_the_loss_their_data_calls_for(
    llama_base: Path, tmp_path: Path, labels: str, loss: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(llama_base, tmp_path / "m", data=str(rated_file(tmp_path, labels)), max_pairs=160, epochs=3)
    result = train(cfg)
    assert f"objective: {loss}" in capsys.readouterr().out  # the loss is stated in the log
    meta = json.loads((result.output / "rewardgate.json").read_text())
    assert meta["objective"]["data"] == "rated" and meta["objective"]["loss"] == loss  # and in the card
    assert meta["data"]["train_rows"] == 160 and meta["data"]["test_rows"] == 84 and meta["data"]["rows"] == 800
    assert meta["data"]["truncation"]["rows_in"] == 160 and "rows_per_second" in meta["training"]
    test = meta["metrics"]["test"]
    assert test["count"] == 84 and test["spearman"] > 0.3 and test["pass_threshold"] == 0.5
    assert (test["auc"] is not None) == (labels == "thumbs")
    if labels == "thumbs":
        assert test["auc"] > 0.7 and test["pass_accuracy"] > 0.6
    assert meta["reward_stats"]["count"] == 84 and meta["reward_stats"]["std"] > 0
    rows = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "train" and rows[0]["loss"] > 0 and rows[-1]["kind"] == "eval"
    # the served directory: the same render and pooling, so plain transformers gives the card's scores
    model, tok, _ = load_reward_model(result.output, "cpu")
    conversations = [r.conversation for r in load_rated_file(cfg.data).split("TEST")[:4]]
    assert len(score_conversations(model, tok, conversations, 1024)) == 4


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_length_debiased_run_saves_the_quality_head_alone(kind: str, tmp_path: Path) -> None:
    base = tiny.save_base(tmp_path / "base", kind)
    result = train(config(base, tmp_path / "m", length_debiased=True, max_pairs=160, epochs=3))
    model, _, meta = load_reward_model(result.output, "cpu")
    head = model.score if kind == "llama" else model.classifier
    assert head.out_features == 1 and model.config.num_labels == 1  # a plain one-output model, as served
    config_json = json.loads((result.output / "config.json").read_text())
    assert len(config_json.get("id2label", {"0": "LABEL_0"})) == 1
    assert meta["objective"]["length_debiased"] is True
    rows = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "train"][-1]
    assert abs(last["quality_length_corr"]) < 0.3, last  # the served head does not follow the answers' length
    if kind == "llama":  # the sample's chosen answer is the longer one in 44 % of pairs: the quality head learns
        # content
        assert result.test.accuracy >= 0.7, result.test
