"""`rewardgate distill` end to end in-process through the real CLI: logs in a real SQLite store, scored offline
by a rule with `rewardgate eval logs` (a judge that calls no provider), distilled by the real trainer subprocess on
a tiny base into a reward model the embedded reward server serves at once; the JSON report checked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.store import CandidateRecord, Latencies, open_store
from tests import tiny

ANSWERS = ["Reset your password under Settings > Security.", "I cannot help with that.",
           "Click 'forgot password' on the login page.", "Please ask someone else."]  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    async def fill() -> None:
        store = await open_store(str(tmp_path / "gw.db"))
        try:
            spec = {"type": "regex", "pattern": "password", "flags": "i", "must": "match"}
            await store.create_criterion(slug="mentions-password", kind="rule", spec=spec)
            for i in range(10):
                messages = [{"role": "user", "content": f"I am locked out of my account (ticket {i})."}]
                candidates = [CandidateRecord(j, {"role": "assistant", "content": a}) for j, a in enumerate(ANSWERS)]
                await store.create_log(
                    model="m",
                    request={"model": "m", "messages": messages},
                    candidates=candidates,
                    latencies=Latencies(),
                    metadata={"app": "support"},
                )
        finally:
            await store.aclose()

    asyncio.run(fill())
    base = tiny.save_base(tmp_path / "base", "llama")
    return {"store": str(tmp_path / "gw.db"), "models": str(tmp_path / "models"), "base": str(base),
            "jobs": str(tmp_path / "jobs")}  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_a_rule_scored_offline_is_distilled_and_compared(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--store-url",
        setup["store"],
        "--models-dir",
        setup["models"],
        "--device",
        "cpu",
        "--jobs-dir",
        setup["jobs"],
        "--trainer-args=--threads=1,--precision=fp32,--learning-rate=0.002",
    ]
    code, scored, _ = run(capsys, "eval", "logs", "--criterion", "mentions-password", *common)
    assert code == 0 and scored["candidates"] == 40
    code, report, err = run(
        capsys,
        "distill",
        "--criterion",
        "mentions-password",
        "--slug",
        "pw-rm",
        "--metadata",
        "app=support",
        "--base-model",
        setup["base"],
        "--epochs",
        "6",
        *common,
    )
    assert code == 0, err
    assert "training: step" in err and '"rows": 40' in err  # progress and the rows on stderr, the report on stdout
    assert report["model"] == "pw-rm@v1" and report["criterion"] == {"slug": "mentions-password", "version": "v1",
                                                                     "kind": "rule"}  # fmt: skip
    assert report["data"]["rows"] == 40 and report["data"]["test"] == 8 and Path(report["data"]["path"]).is_file()
    assert report["objective"]["loss"] == "binary_cross_entropy"  # a rule scores 0/1: the labels' loss
    agreement = report["agreement"]
    assert agreement["count"] == 8 and agreement["pass_accuracy"] == 1.0 and agreement["auc"] == 1.0
    judge, model = report["cost_and_latency"]["judge"], report["cost_and_latency"]["reward_model"]
    assert judge["model"] is None and judge["usd_per_candidate"] == 0.0 and judge["candidates"] == 8
    assert model["candidates"] == 8 and model["errors"] == 0 and model["latency_ms_per_candidate"] > 0
    assert (Path(setup["models"]) / "pw-rm" / "v1" / "rewardgate.json").is_file()


def test_bad_criteria_and_too_little_data_exit_2(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--store-url", setup["store"], "--models-dir", setup["models"], "--device", "cpu"]
    code, _, err = run(capsys, "distill", "--criterion", "nope", "--slug", "x", *common)
    assert code == 2 and "nope" in err
    code, _, err = run(capsys, "distill", "--criterion", "mentions-password", "--slug", "x", *common)
    assert code == 2 and "no stored candidate was scored by mentions-password@v1" in err  # not scored yet
