"""The output directory: which version a run writes, checkpoints that resume, and rewardgate.json (DESIGN
contract 2): its keys, written atomically, and written last (its presence marks a complete model)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

import trainer.checkpoint as checkpoint
from gateway.formats import load_pairs
from tests import tiny
from trainer.checkpoint import (
    CARD_FILE,
    data_summary,
    latest_checkpoint,
    load_checkpoint,
    model_card,
    output_dir,
    remove_checkpoints,
    resolved_config,
    restore_training_state,
    save_checkpoint,
    training_state,
    training_summary,
    write_model_card,
)
from trainer.config import SAMPLE_DATA, TrainConfig
from trainer.data import training_data
from trainer.distributed import Distributed
from trainer.evaluate import PairMetrics
from trainer.train import train

# What the gateway's job runner, the reward server and the console read, in the order the file has them.
CARD_KEYS = [
    "format",
    "slug",
    "version",
    "base_model",
    "base_model_path",
    "architecture",
    "created_at",
    "max_length",
    "config",
    "objective",
    "data",
    "training",
    "metrics",
    "reward_stats",
]
ONE_PROCESS = Distributed(torch.device("cpu"))


def metrics(scores: tuple[float, ...]) -> PairMetrics:
    return PairMetrics(len(scores) // 2, 0.75, 0.5, 0.25, 1.5, 0.5, scores)


def test_the_card_holds_contract_2s_keys_in_order() -> None:
    cfg = TrainConfig(base_model="minilm", output="runs/support-rm", max_pairs=8, max_length=1024)
    data = training_data(cfg, load_pairs(SAMPLE_DATA), tiny.chat_tokenizer())
    test = metrics((1.0, -1.0, 2.0, 0.0))
    card = model_card(
        cfg,
        "support-rm",
        "v3",
        "/cache/minilm",
        "BertForSequenceClassification",
        config=resolved_config(cfg, 8, "bf16", "eager", torch.device("cpu"), 1),
        data=data_summary(cfg.data, data),
        training=training_summary(24, 12.5, True, 96, 5000),
        test=test,
        bf16=True,
        reward_stats=test,
        stats_split="TEST",
        created_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    assert list(card) == CARD_KEYS
    assert card["format"] == 1 and card["slug"] == "support-rm" and card["version"] == "v3"
    assert card["base_model"] == "minilm" and card["base_model_path"] == "/cache/minilm"  # the alias and its path
    assert card["created_at"] == "2026-01-02T03:04:05+00:00" and card["max_length"] == 1024
    resolved = {"resolved_batch_size": 8, "precision": "bf16", "attention": "eager", "device": "cpu", "processes": 1}
    assert card["config"] == cfg.to_dict() | resolved
    assert card["objective"] == {"data": "pairs", "loss": "bradley_terry", "center_rewards": 0.0}
    assert card["data"] == {
        "path": SAMPLE_DATA,
        "sha256": hashlib.sha256(Path(SAMPLE_DATA).read_bytes()).hexdigest(),
        "pairs": 400,
        "train_pairs": 8,
        "test_pairs": 42,
        "skipped_lines": 0,
        "truncation": {"pairs_in": 8, "prompts_trimmed": 0, "answers_cut": 0, "dropped": 0},
    }
    assert card["training"] == {
        "steps": 24,
        "seconds": 12.5,
        "stopped_early": True,
        "pairs_per_second": 7.68,
        "tokens_per_second": 400.0,
    }
    assert card["metrics"] == {"test": test.to_dict(), "precision": "bf16"}
    assert card["reward_stats"] == {
        "mean": 0.25,
        "std": 1.5,
        "count": 4,  # every scored answer: chosen and rejected
        "split": "TEST",
        "histogram": test.histogram(),
    }
    json.dumps(card)  # plain JSON all through


def test_the_card_names_the_resolved_base_when_none_was_given_and_a_run_of_no_time_has_no_rates() -> None:
    cfg = TrainConfig(output="m")
    test = PairMetrics(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    card = model_card(
        cfg, "m", "v1", "/cache/minilm", "X", config={}, data={}, training=training_summary(0, 0.0, False, 0, 0),
        test=test, bf16=False, reward_stats=test, stats_split="TRAIN",
    )  # fmt: skip
    assert card["base_model"] == "/cache/minilm" and card["metrics"]["precision"] == "fp32"
    assert card["training"]["pairs_per_second"] == 0.0 and card["training"]["tokens_per_second"] == 0.0
    assert card["reward_stats"]["histogram"] is None and card["reward_stats"]["split"] == "TRAIN"
    assert dt.datetime.fromisoformat(card["created_at"]).tzinfo is not None


def test_the_card_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_model_card(tmp_path, {"slug": "m", "version": "v1"})
    assert path == tmp_path / CARD_FILE and json.loads(path.read_text()) == {"slug": "m", "version": "v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CARD_FILE]  # no temporary file left behind

    with pytest.raises(TypeError):  # a card that cannot be written leaves no card, not half of one
        write_model_card(tmp_path / "a", {"slug": object()})
    assert not (tmp_path / "a" / CARD_FILE).exists()

    def killed(src: Path, dst: Path) -> None:
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    (tmp_path / "b").mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_model_card(tmp_path / "b", {"slug": "m"})
    assert not (tmp_path / "b" / CARD_FILE).exists()


def test_train_writes_the_card_last_and_only_then_removes_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.train

    base = tiny.save_base(tmp_path / "base")
    present: list[str] = []
    write = trainer.train.write_model_card

    def spy(output: Path, card: dict[str, object]) -> Path:
        present.extend(p.name for p in output.iterdir())
        return write(output, card)

    monkeypatch.setattr(trainer.train, "write_model_card", spy)
    cfg = TrainConfig(
        base_model=str(base), output=str(tmp_path / "m"), batch_size="4", max_pairs=8, epochs=1, save_steps=1,
        progress=False, precision="fp32", max_length=1024,
    )  # fmt: skip
    out = train(cfg).output
    model_files = {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "training_curves.png"}
    assert model_files | {"train_config.json", "checkpoints"} <= set(present) and CARD_FILE not in present
    assert list(json.loads((out / CARD_FILE).read_text())) == CARD_KEYS
    assert not (out / "checkpoints").exists()


def test_output_dir_picks_the_version(tmp_path: Path) -> None:
    assert output_dir(TrainConfig(output=str(tmp_path / "support-rm"))) == (tmp_path / "support-rm", "support-rm", "v1")
    assert output_dir(TrainConfig(output=str(tmp_path / "rm" / "v7"))) == (tmp_path / "rm" / "v7", "v7", "v7")
    assert output_dir(TrainConfig(output=str(tmp_path / "x"), slug="named"))[1] == "named"

    store = TrainConfig(models_dir=str(tmp_path / "models"), slug="rm")
    assert output_dir(store) == (tmp_path / "models" / "rm" / "v1", "rm", "v1")
    for finished in ("v1", "v2"):
        (tmp_path / "models" / "rm" / finished).mkdir(parents=True)
        (tmp_path / "models" / "rm" / finished / CARD_FILE).write_text("{}")
    (tmp_path / "models" / "rm" / "v3").mkdir()  # a killed run: no card
    assert output_dir(store)[2] == "v4"
    resume = TrainConfig(models_dir=str(tmp_path / "models"), slug="rm", resume=True)
    assert output_dir(resume)[2] == "v3"  # --resume goes on with the unfinished version

    with pytest.raises(FileExistsError):
        output_dir(TrainConfig(output=str(tmp_path / "models" / "rm" / "v1")))
    with pytest.raises(ValueError, match="exactly one"):
        output_dir(TrainConfig())
    with pytest.raises(ValueError, match="--slug"):
        output_dir(TrainConfig(models_dir=str(tmp_path), slug="Not A Slug"))


def test_a_checkpoint_restores_weights_master_copies_optimizer_position_and_rng(tmp_path: Path) -> None:
    def build() -> tuple[torch.nn.Linear, list[torch.Tensor], torch.optim.AdamW]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        master = [p.detach().float().clone() for p in model.parameters()]
        return model, master, torch.optim.AdamW(master, lr=0.1)

    model, master, optimizer = build()
    for m in master:
        m.grad = torch.ones_like(m)
    optimizer.step()
    with torch.no_grad():
        model.weight.add_(1.0)
    state = training_state(ONE_PROCESS, model, optimizer, master, epoch=2, next_batch=5)
    random.seed(7)
    save_checkpoint(tmp_path, 30, state)
    expected_draw = random.random()

    fresh, fresh_master, fresh_optimizer = build()
    random.seed(99)
    saved = load_checkpoint(tmp_path / "checkpoints" / "step-30.pt")
    assert random.random() == expected_draw  # the RNG goes on where it was when the checkpoint was written
    assert restore_training_state(saved, ONE_PROCESS, fresh, fresh_optimizer, fresh_master) == (30, 2, 5)
    assert torch.equal(fresh.weight, model.weight)
    assert all(torch.equal(a, b) for a, b in zip(fresh_master, master, strict=True))
    moments = [o.state_dict()["state"][0]["exp_avg"] for o in (fresh_optimizer, optimizer)]
    assert torch.equal(*moments)

    save_checkpoint(tmp_path, 40, state)  # only the newest is kept
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-40.pt"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-40.pt"]
    remove_checkpoints(tmp_path)
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "checkpoints").exists()


def test_without_master_copies_a_checkpoint_holds_none() -> None:
    model = torch.nn.Linear(2, 1)
    state = training_state(ONE_PROCESS, model, torch.optim.AdamW(model.parameters()), None, 0, 1)
    assert list(state) == ["model", "optimizer", "master", "epoch", "next_batch"] and state["master"] == []
