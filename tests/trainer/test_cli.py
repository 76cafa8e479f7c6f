from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import tiny
from trainer.cli import main
from trainer.config import SAMPLE_DATA

GOOD = (
    '{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello! How can I help?"}],'
    '"rejected_message":{"role":"assistant","content":"What."},"split":"TRAIN"}'
)


def test_validate_prints_a_one_line_summary_for_a_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", SAMPLE_DATA]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{SAMPLE_DATA}: valid: 400 pairs (TRAIN 358, TEST 42)"]


def test_validate_lists_every_bad_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join([GOOD, "{not json", GOOD, '{"messages":[]}', "", GOOD.replace('"TRAIN"', '"DEV"')]) + "\n"
    )
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["line 2", "line 4", "line 6"]
    assert "invalid JSON" in lines[0] and "messages" in lines[1] and "split" in lines[2]


def test_validate_skip_invalid_accepts_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n{oops\n")
    assert main(["validate", "--skip-invalid", str(path)]) == 0
    out = capsys.readouterr().out
    assert "line 2: invalid JSON" in out and "1 invalid line(s) skipped" in out


def test_validate_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl" in capsys.readouterr().err


def test_train_refuses_a_bad_dataset_with_every_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n[1]\n{}\n")
    base = tiny.save_base(tmp_path / "base")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert main(["train", "--data", str(path), "--base-model", str(base), "--output", str(tmp_path / "o")]) == 1
    out = capsys.readouterr().out
    assert "line 2:" in out and "line 3:" in out
    assert not (tmp_path / "o" / "rewardgate.json").exists()
    # the trainer's process runs without oneDNN's per-shape primitive cache (RSS grew with it; BENCHMARKS)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"


def test_eval_reports_accuracy_margin_count_and_the_length_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny.save_reward_model(tmp_path / "rm")
    assert main(["eval", "--model", str(model), "--data", SAMPLE_DATA, "--split", "TEST"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 42 and report["split"] == "TEST"
    assert set(report) >= {"accuracy", "mean_margin", "length_baseline_accuracy", "reward_mean", "reward_std"}
    assert 0.0 <= report["accuracy"] <= 1.0


def test_validate_and_eval_take_rated_responses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.scripts.test_make_rated_data import load_script

    path = tmp_path / "thumbs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in load_script().rated_rows(limit=30)))
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: valid: 60 rated responses (TRAIN 54, TEST 6, 0/1 labels)"
    model = tiny.save_reward_model(tmp_path / "rm")
    assert main(["eval", "--model", str(model), "--data", str(path), "--threshold", "0.6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "rated" and report["count"] == 60 and report["pass_threshold"] == 0.6
    assert set(report) >= {"pearson", "spearman", "auc", "rmse", "pass_accuracy", "length_spearman"}
    assert 0.0 <= report["auc"] <= 1.0
