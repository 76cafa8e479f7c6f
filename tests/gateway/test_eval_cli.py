"""`rewardgate eval` end to end in-process: the real CLI, a real SQLite store holding rule definitions, and the
embedded reward server with a tiny model; reports checked against numbers worked out by hand."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.store import open_store
from tests.tiny import save_reward_model

USER = {"role": "user", "content": "How do I reset my password?"}
LONG = "Open settings, choose security, then reset your password."
SHORT = "No."


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    save_reward_model(tmp_path / "models" / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)

    async def define() -> None:
        store = await open_store(str(tmp_path / "gw.db"))
        try:
            await store.create_criterion(slug="wordy", kind="rule", spec={"type": "length", "min_chars": 20})
        finally:
            await store.aclose()

    asyncio.run(define())
    return {"models": str(tmp_path / "models"), "store": str(tmp_path / "gw.db"), "tmp": str(tmp_path)}


def write(path: Path, rows: list[Any]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else out


def pair(chosen: str, rejected: str) -> dict[str, Any]:
    return {"messages": [USER, {"role": "assistant", "content": chosen}],
            "rejected_message": {"role": "assistant", "content": rejected}}  # fmt: skip


def test_pairs_accuracy_with_ties_and_the_length_baseline(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(
        Path(setup["tmp"]) / "p.jsonl", [pair(LONG, SHORT), pair(SHORT, LONG), pair(LONG, LONG + " Then log in.")]
    )
    common = ["--models-dir", setup["models"], "--store-url", setup["store"], "--device", "cpu"]
    scores = Path(setup["tmp"]) / "scores.jsonl"
    code, report = run(capsys, "eval", "pairs", "--criterion", "wordy", "--data", data, "--out", str(scores), *common)
    assert code == 0
    per_pair = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [p["index"] for p in per_pair] == [0, 1, 2]
    assert per_pair[0]["chosen"] > per_pair[0]["rejected"] and per_pair[1]["chosen"] < per_pair[1]["rejected"]
    assert per_pair[2]["chosen"] == per_pair[2]["rejected"]
    # wordy: pair 1 right (1), pair 2 wrong (0), pair 3 a tie (0.5); length: 1, 0, 0 (the rejected is longer)
    assert report["criterion"] == {"slug": "wordy", "version": "v1", "kind": "rule"}
    assert (report["pairs"], report["ties"], report["errored"]) == (3, 1, 0)
    assert report["accuracy"] == pytest.approx(0.5) and report["length_baseline"] == pytest.approx(1 / 3)
    code, report = run(capsys, "eval", "pairs", "--criterion", "tiny-rm@v1", "--data", data, *common)
    assert code == 0 and report["criterion"]["kind"] == "reward_model" and report["errored"] == 0
    assert 0.0 <= report["accuracy"] <= 1.0


def test_replay_picks_and_baselines(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": "a", "messages": [USER], "candidates": [SHORT, LONG, "Ok."], "labels": [0.1, 0.7, 0.4]},
        {"id": "b", "messages": [USER], "candidates": [LONG, SHORT + " " + SHORT], "labels": [0.2, 0.6]},
        {"id": "c", "messages": [USER], "candidates": [LONG, SHORT]},  # no labels: picked, not in the means
    ]
    data = write(Path(setup["tmp"]) / "r.jsonl", rows)
    out = Path(setup["tmp"]) / "picks.jsonl"
    common = ["--models-dir", setup["models"], "--store-url", setup["store"], "--device", "cpu"]
    code, report = run(capsys, "eval", "replay", "--criterion", "wordy", "--data", data, "--out", str(out), *common)
    assert code == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": "a", "pick": 1},
        {"id": "b", "pick": 0},
        {"id": "c", "pick": 0},
    ]
    assert report["rows"] == 3 and report["labelled_rows"] == 2
    means = report["mean_label"]
    assert means["criterion"] == pytest.approx((0.7 + 0.2) / 2)
    assert means["random"] == pytest.approx((0.4 + 0.4) / 2)
    assert means["longest"] == pytest.approx((0.7 + 0.2) / 2)
    assert means["oracle"] == pytest.approx((0.7 + 0.6) / 2)
    code, report = run(
        capsys, "eval", "replay", "--criterion", "wordy", "--data", data, "--max-candidates", "1", *common
    )
    assert report["mean_label"]["oracle"] == pytest.approx((0.1 + 0.2) / 2)


def test_bad_input_and_unknown_criteria(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--models-dir", setup["models"], "--store-url", setup["store"], "--device", "cpu"]
    data = write(Path(setup["tmp"]) / "bad.jsonl", [pair(LONG, SHORT), "{oops", pair(LONG, LONG)])
    assert main(["eval", "pairs", "--criterion", "wordy", "--data", data, *common]) == 1
    assert "line 2" in capsys.readouterr().err
    code, report = run(capsys, "eval", "pairs", "--criterion", "wordy", "--data", data, "--skip-invalid", *common)
    assert code == 0 and report["pairs"] == 1 and report["skipped_lines"] == 2
    assert main(["eval", "pairs", "--criterion", "nothing@v3", "--data", data, *common]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_llm_judge_evaluates_pairs_through_the_providers(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    from gateway.cli import evaluate, open_services
    from gateway.config import GatewaySettings
    from tests.gateway.fakes import KEY, fake_upstream

    async with fake_upstream() as upstream:
        settings = GatewaySettings(models_dir=setup["models"], store_url=setup["store"], device="cpu")
        environ = {"OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": KEY}
        async with open_services(settings, environ=environ) as services:
            spec = {"model": "openai:judge", "instructions": "Must explain how to reset a password."}
            await services.criteria.create(slug="pw", kind="llm_judge", spec=spec)
        data = write(Path(setup["tmp"]) / "p.jsonl", [pair(LONG, SHORT), pair(SHORT, LONG)])
        args = {"eval_command": "pairs", "criterion": "pw", "data": data, "split": "all", "skip_invalid": False,
                "concurrency": 4}  # fmt: skip
        assert await evaluate(args, settings, environ) == 0
    report = json.loads(capsys.readouterr().out)
    # the fake judge passes answers mentioning a password (0.9) and fails the rest (0.2): right, then wrong
    assert report["criterion"]["kind"] == "llm_judge" and report["accuracy"] == pytest.approx(0.5)
    assert len([b for b in upstream.bodies if b["model"] == "judge"]) == 4


def test_logs_are_scored_and_written_back(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.store import CandidateRecord, Latencies

    async def store_logs() -> list[str]:
        store = await open_store(setup["store"])
        try:
            ids = []
            for app in ("support", "other"):
                log = await store.create_log(
                    model="m",
                    request={"model": "m", "messages": [USER]},
                    candidates=[
                        CandidateRecord(0, {"role": "assistant", "content": LONG}, score=0.2, rank=1),
                        CandidateRecord(1, {"role": "assistant", "content": SHORT}, score=0.9, rank=0),
                        CandidateRecord(2, None, "error", "error", "upstream_error: boom"),
                    ],
                    latencies=Latencies(),
                    metadata={"app": app},
                )
                ids.append(log.id)
            return ids
        finally:
            await store.aclose()

    support, other = asyncio.run(store_logs())
    common = ["--models-dir", setup["models"], "--store-url", setup["store"], "--device", "cpu"]
    code, report = run(capsys, "eval", "logs", "--criterion", "wordy", "--metadata", "app=support", *common)
    assert code == 0 and report == {**report, "logs": 1, "candidates": 2, "errors": 0}

    async def read() -> tuple[Any, Any]:
        store = await open_store(setup["store"])
        try:
            return await store.get_log(support), await store.get_log(other)
        finally:
            await store.aclose()

    scored, untouched = asyncio.run(read())
    by_index = {c.index: c for c in scored.candidates}
    assert by_index[0].criteria_results["wordy"]["score"] == 1.0 and by_index[0].criteria_results["wordy"]["offline"]
    assert by_index[1].criteria_results["wordy"]["score"] == 0.0
    assert "wordy" not in by_index[2].criteria_results  # the provider never produced it
    assert [c.index for c in scored.candidates] == [1, 0, 2]  # the request-time ranking is kept
    assert all("wordy" not in c.criteria_results for c in untouched.candidates)
