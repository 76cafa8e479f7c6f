"""gateway/service/distill.py's parts that need no trainer: the rows made from a judge's stored results (what
counts, what is skipped and why), the held-back slice by prompt, the agreement read from a model card, and the cost
and latency measurements with fake criteria and a fake clock. The whole flow runs in tests/gateway/test_sources.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.criteria import CriterionResult
from gateway.errors import InvalidRequestError
from gateway.formats import Message, RatedResponse, load_rated
from gateway.service.distill import (
    agreement,
    hold_back,
    judge_cost,
    judged_candidates,
    judged_rows,
    reward_model_cost,
)
from gateway.store import CandidateRecord, Latencies, LogQuery, LogRecord, open_store

pytestmark = pytest.mark.anyio


@dataclass
class FakeCriterion:
    slug: str = "pw-judge"
    version: str = "v2"
    kind: str = "llm_judge"
    calls: list[int] = field(default_factory=list)
    usage: dict[str, int] | None = None

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        self.calls.append(len(candidates))
        return [CriterionResult.success(0.9, version=self.version, usage=self.usage) for _ in candidates]


def answer(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def result(score: float, version: str = "v2", status: str = "success") -> dict[str, object]:
    return {"status": status, "score": score, "version": version}


def log(prompt: str, candidates: list[CandidateRecord], log_id: str = "log_1") -> LogRecord:
    request = {"model": "m", "messages": [{"role": "user", "content": prompt}], "tools": [{"type": "function"}]}
    return LogRecord(log_id, datetime.now(UTC), "m", request, Latencies(None, None, None), {}, {}, tuple(candidates))


def rated(prompt: str, reward: float = 1.0) -> RatedResponse:
    return RatedResponse((Message("user", prompt),), Message("assistant", "a"), reward, "TRAIN")


def test_only_successful_results_of_the_judges_version_become_rows() -> None:
    candidates = [
        CandidateRecord(0, answer("Reset your password."), criteria_results={"pw-judge": result(0.9)}),
        CandidateRecord(1, answer("No."), criteria_results={"pw-judge": result(0.2)}),
        CandidateRecord(2, answer("Old."), criteria_results={"pw-judge": result(0.7, version="v1")}),
        CandidateRecord(3, answer("Err."), criteria_results={"pw-judge": result(0.0, status="error")}),
        CandidateRecord(4, answer("Other."), criteria_results={"tone": result(0.5)}),
        CandidateRecord(5, None, status="error", error="upstream failed"),
        CandidateRecord(6, answer(""), criteria_results={"pw-judge": result(0.5)}),
        CandidateRecord(7, answer("Odd."), criteria_results={"pw-judge": result(3.0)}),
    ]
    skipped: Counter[str] = Counter()
    rows = judged_candidates(log("How do I reset?", candidates), FakeCriterion(), skipped)
    assert [(r.response.content, r.reward) for r in rows] == [("Reset your password.", 0.9), ("No.", 0.2)]
    assert rows[0].metadata == {"log_id": "log_1", "candidate": 0, "judge": "pw-judge@v2"}
    assert rows[0].tools == ({"type": "function"},) and rows[0].prompt[0].content == "How do I reset?"
    assert skipped == {
        "scored by another version (v1)": 1,
        "the judge errored": 1,
        "not scored by pw-judge": 1,
        "not a valid rated response": 1,
        "a score outside 0..1": 1,
    }


def test_the_held_back_slice_is_whole_prompts_deterministic_and_never_everything() -> None:
    rows = [rated(f"prompt {i % 10}") for i in range(40)]  # 10 prompts, 4 candidates each
    split = hold_back(rows, 0.2)
    assert split == hold_back(list(reversed(rows)), 0.2)[::-1]
    test_prompts = {r.prompt for r in split if r.split == "TEST"}
    assert len(test_prompts) == 2 and sum(r.split == "TEST" for r in split) == 8
    assert all(r.split == "TEST" for r in split if r.prompt in test_prompts)  # a prompt never straddles
    two = hold_back([rated("a"), rated("b")], 0.9)
    assert sorted(r.split for r in two) == ["TEST", "TRAIN"]  # at least one prompt on each side
    with pytest.raises(InvalidRequestError, match="1 distinct prompt"):
        hold_back([rated("same"), rated("same")], 0.2)


async def test_judged_rows_reads_the_newest_logs_up_to_the_limit(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "gw.db"))
    try:
        for i in range(5):
            candidates = [
                CandidateRecord(0, answer("Reset your password."), criteria_results={"pw-judge": result(0.9)}),
                CandidateRecord(1, answer("No."), criteria_results={"pw-judge": result(0.2)}),
            ]
            await store.create_log(
                model="m",
                request={"messages": [{"role": "user", "content": f"q{i}"}]},
                candidates=candidates,
                latencies=Latencies(1, 1, 1),
                metadata={"app": "a"},
            )
        rows = await judged_rows(store, FakeCriterion(), LogQuery({"app": "a"}), limit=4, test_fraction=0.25)
    finally:
        await store.aclose()
    assert rows.logs == 4 and len(rows.rows) == 8 and len(rows.split("TEST")) == 2
    assert rows.to_json() == {"judge": "pw-judge@v2", "logs": 4, "rows": 8, "train": 6, "test": 2, "skipped": {}}
    loaded = load_rated(rows.jsonl().splitlines())
    assert loaded.binary is False and len(loaded.split("TEST")) == 2  # the split is written with each row


def test_agreement_is_the_cards_test_metrics() -> None:
    card = {"metrics": {"test": {"count": 8, "spearman": 0.8, "pass_accuracy": 0.75, "pass_threshold": 0.5}}}
    assert agreement(card) == {"count": 8, "spearman": 0.8, "pearson": None, "pass_threshold": 0.5,
                               "pass_accuracy": 0.75, "auc": None, "rmse": None, "length_spearman": None}  # fmt: skip


class Clock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_the_reward_model_is_timed_one_call_per_prompt_after_a_warm_up() -> None:
    model = FakeCriterion("pw-rm", "v1", "reward_model")
    rows = [rated("a"), rated("a"), rated("b")]
    measured = await reward_model_cost(model, rows, clock=Clock(0.003))
    assert model.calls == [2, 2, 1]  # warm-up with the first prompt's candidates, then one call per prompt
    assert measured == {"candidates": 3, "errors": 0, "latency_ms_per_candidate": 1.0, "usd_per_candidate": 0.0}
    assert (await reward_model_cost(model, []))["latency_ms_per_candidate"] is None


async def test_the_judge_is_timed_and_priced_one_candidate_per_call() -> None:
    judge = FakeCriterion(usage={"prompt_tokens": 1000, "completion_tokens": 100})
    rows = [rated(f"q{i}") for i in range(5)]
    measured = await judge_cost(judge, "openai:gpt-4o-mini", rows, 3, clock=Clock(0.25))
    assert judge.calls == [1, 1, 1] and measured["candidates"] == 3 and measured["latency_ms_per_candidate"] == 250.0
    assert measured["tokens_per_candidate"] == {"prompt": 1000, "completion": 100}
    assert measured["usd_per_candidate"] == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)  # gpt-4o-mini's list price
    unpriced = await judge_cost(judge, "fake:judge", rows, 1)
    assert unpriced["usd_per_candidate"] is None and unpriced["model"] == "fake:judge"
    assert (await judge_cost(judge, None, rows, 1))["usd_per_candidate"] == 0.0  # a rule calls no provider
    assert (await judge_cost(judge, "m", rows, 0))["candidates"] == 0
