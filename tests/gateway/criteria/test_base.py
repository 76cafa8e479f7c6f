"""The criteria vocabulary and registry as pure code: header parsing, normalization, the combination rule,
ranking, score_all's guarantees and resolution, with fake criteria and resolvers (no HTTP, no models)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from gateway.criteria import (
    MAX_CRITERIA,
    CriteriaError,
    CriteriaHeaderError,
    Criterion,
    CriterionRef,
    CriterionResult,
    CriterionUnavailableError,
    FailedCriterion,
    Scored,
    UnknownCriterionError,
    combine,
    normalize_reward,
    parse_criteria_header,
    rank,
    resolve_criteria,
    score_all,
)
from gateway.formats import Message

PROMPT = [Message("user", "How do I reset my password?")]


# ---------------------------------------------------------------- the header


def test_header_accepts_strings_and_objects() -> None:
    header = ' ["support-rm", "no-apologies@v2", {"id": "tone_1.x@v10", "weight": 2}, {"id": "b"}] '
    refs = parse_criteria_header(header)
    assert refs == [
        CriterionRef("support-rm", None, 1.0),
        CriterionRef("no-apologies", 2, 1.0),
        CriterionRef("tone_1.x", 10, 2.0),
        CriterionRef("b", None, 1.0),
    ]
    assert [r.id for r in refs] == ["support-rm", "no-apologies@v2", "tone_1.x@v10", "b"]
    assert isinstance(refs[2].weight, float)


MALFORMED = [
    ("support-rm", ["op-criteria:", "not valid JSON"]),
    ('{"id": "rm"}', ["must be a JSON array", "got an object"]),
    ('"rm"', ["must be a JSON array", "got a string"]),
    ("[]", ["empty"]),
    (json.dumps([f"rm{i}" for i in range(MAX_CRITERIA + 1)]), [f"too many criteria: {MAX_CRITERIA + 1}"]),
    ("[1]", ["op-criteria[0]", "an entry must be a string", "got a number", "(entry 1)"]),
    ('["ok", null]', ["op-criteria[1]", "got null"]),
    ('["ok", ["rm"]]', ["op-criteria[1]", "got an array"]),
    ('["bad slug"]', ["op-criteria[0]", "bad criterion slug 'bad slug'"]),
    ('["-rm"]', ["bad criterion slug '-rm'"]),
    ('[""]', ["bad criterion slug ''"]),
    ('["a/../b"]', ["bad criterion slug 'a/../b'"]),
    ('["rm@2"]', ["bad version '2' in 'rm@2'", "rm@v2"]),
    ('["rm@"]', ["bad version '' in 'rm@'"]),
    ('["rm@v1@v2"]', ["bad version 'v1@v2'"]),
    ('["rm@vx"]', ["bad version 'vx'"]),
    ('["rm", "rm@v2"]', ["op-criteria[1]", "duplicate criterion 'rm' (also entry 0)", "(entry 'rm@v2')"]),
    ('["rm", {"id": "rm"}]', ["op-criteria[1]", "duplicate criterion 'rm'"]),
    ('[{"weight": 2}]', ["op-criteria[0]", "needs a string 'id'", "got null"]),
    ('[{"id": 7}]', ["needs a string 'id'", "got a number"]),
    ('[{"id": "rm", "wieght": 2}]', ["unknown key 'wieght'"]),
    ('[{"id": "rm", "weight": 0}]', ["weight must be a finite number > 0, got 0.0"]),
    ('[{"id": "rm", "weight": -1.5}]', ["weight must be a finite number > 0"]),
    ('[{"id": "rm", "weight": 1e400}]', ["weight must be a finite number > 0, got inf"]),
    ('[{"id": "rm", "weight": NaN}]', ["weight must be a finite number > 0, got nan"]),
    ('[{"id": "rm", "weight": "2"}]', ["weight must be a number, got a string"]),
    ('[{"id": "rm", "weight": true}]', ["weight must be a number, got a boolean"]),
    ('["ok", {"id": "rm", "weight": ' + "9" * 400 + "}]", ["op-criteria[1]", "weight is out of range"]),
    ("[" * 100_000, ["not valid JSON", "nested too deeply"]),
]


@pytest.mark.parametrize(("value", "expected"), MALFORMED, ids=[m[0][:30] for m in MALFORMED])
def test_malformed_headers_name_the_problem_and_the_entry(value: str, expected: list[str]) -> None:
    with pytest.raises(CriteriaHeaderError) as info:
        parse_criteria_header(value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CriteriaError)
    for text in expected:
        assert text in str(info.value)


def test_header_error_carries_position_and_entry() -> None:
    with pytest.raises(CriteriaHeaderError) as info:
        parse_criteria_header('["ok", {"id": "rm@v0x"}]')
    assert (info.value.position, info.value.entry) == (1, {"id": "rm@v0x"})


# ---------------------------------------------------------------- results and normalization


def test_results_serialize_in_openpipe_shape_with_the_version() -> None:
    ok = CriterionResult.success(1.5, version="v3", explanation="why", normalized=0.7)
    assert ok.to_json() == {"status": "success", "score": 1.5, "explanation": "why", "version": "v3"}
    assert CriterionResult.success(0.25, version="v1").normalized == 0.25  # judge scores are already 0..1
    bad = CriterionResult.error("timeout", "too slow", version="v3")
    assert bad.to_json() == {"status": "error", "errorCode": "timeout", "errorMessage": "too slow", "version": "v3"}
    assert not bad.ok and ok.ok


@pytest.mark.parametrize(
    "make",
    [
        lambda: CriterionResult.success(math.nan, version="v1", normalized=0.5),
        lambda: CriterionResult.success(2.0, version="v1"),  # a 0..1 scorer out of range
        lambda: CriterionResult.success(1.0, version="v1", normalized=-0.1),
        lambda: CriterionResult.error("", "no code", version="v1"),
    ],
)
def test_invalid_results_cannot_be_built(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_reward_normalization_values() -> None:
    assert normalize_reward(0.0, 0.0, 1.0) == (0.0, 0.5)
    z, p = normalize_reward(3.0, 1.0, 2.0)
    assert z == 1.0 and p == pytest.approx(1 / (1 + math.exp(-1)))  # 0.731: one std above the test mean
    z, p = normalize_reward(-1.0, 1.0, 2.0)
    assert z == -1.0 and p == pytest.approx(0.2689, abs=1e-4)
    for mean, std in [(None, None), (5.0, 0.0), (5.0, -1.0), (math.nan, 1.0), (0.0, math.inf)]:
        assert normalize_reward(2.0, mean, std) == pytest.approx((2.0, 1 / (1 + math.exp(-2))))  # mean 0, std 1
    assert normalize_reward(1e6, 0.0, 1.0)[1] == 1.0 and normalize_reward(-1e6, 0.0, 1.0)[1] == 0.0  # no overflow


def _ok(p: float) -> CriterionResult:
    return CriterionResult.success(p, version="v1")


def _err() -> CriterionResult:
    return CriterionResult.error("timeout", "slow", version="v1")


def test_combination_is_a_weighted_mean_of_successful_results() -> None:
    assert combine({"a": _ok(0.9), "b": _ok(0.3)}, {"a": 1.0, "b": 2.0}) == pytest.approx((0.5, 0))
    assert combine({"a": _ok(0.9), "b": _ok(0.3)}, {}) == pytest.approx((0.6, 0))  # a missing weight is 1
    assert combine({"a": _ok(0.8), "b": _err()}, {"a": 1.0, "b": 5.0}) == (0.8, 1)  # left out, not counted as 0
    assert combine({"a": _err(), "b": _err()}, {}) == (None, 2)
    assert combine({}, {}) == (None, 0)


def test_rank_scored_best_first_ties_in_provider_order_unscored_then_failed_last() -> None:
    scored = [
        Scored(0, 0.5, {}),
        Scored(1, 0.9, {}),
        Scored(2, None, {}, criteria_errors=2),
        Scored(3, 0.9, {}),
        Scored(4, None, {}, failed=True),
        Scored(5, 0.0, {}),
        Scored(6, None, {}, criteria_errors=1),
    ]
    assert rank(scored) == [1, 3, 0, 5, 2, 6, 4]
    assert rank([]) == []


# ---------------------------------------------------------------- score_all with fake criteria


@dataclass
class Fake:
    """Scores each candidate by a table of contents -> normalized score; contents missing from it error."""

    slug: str
    table: dict[str, float] = field(default_factory=dict)
    version: str | None = "v1"
    kind: str = "reward_model"
    raises: BaseException | None = None
    extra: int = 0  # returns this many results too many
    wait_for: asyncio.Event | None = None
    sets: asyncio.Event | None = None
    calls: list[list[str]] = field(default_factory=list)

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        self.calls.append([c.content for c in candidates])
        if self.sets is not None:
            self.sets.set()
        if self.wait_for is not None:
            await self.wait_for.wait()
        if self.raises is not None:
            raise self.raises
        out = [
            CriterionResult.success(self.table[c.content], version=self.version)
            if c.content in self.table
            else CriterionResult.error("no_score", f"nothing for {c.content}", version=self.version)
            for c in candidates
        ]
        return out + out[: self.extra]


def _answers(*texts: str | None) -> list[Message | None]:
    return [None if t is None else Message("assistant", t) for t in texts]


@pytest.mark.anyio
async def test_score_all_weights_errors_all_errored_and_failed_candidates() -> None:
    a = Fake("a", {"x": 0.9, "y": 0.2, "z": 0.6})
    b = Fake("b", {"x": 0.3, "y": 0.8})  # errors on "z" and "w"
    c = Fake("c", {"x": 0.5, "y": 0.5, "z": 0.5})
    scored = await score_all([(a, 1.0), (b, 2.0), (c, 1.0)], PROMPT, _answers("x", None, "y", "z", "w"))
    assert a.calls == [["x", "y", "z", "w"]]  # one call with every produced candidate; the failed one is not sent
    assert [s.index for s in scored] == [0, 1, 2, 3, 4]
    assert scored[0].score == pytest.approx((0.9 + 2 * 0.3 + 0.5) / 4) and scored[0].criteria_errors == 0
    assert scored[1] == Scored(1, None, {}, 0, failed=True)
    assert scored[2].score == pytest.approx((0.2 + 2 * 0.8 + 0.5) / 4)
    assert scored[3].score == pytest.approx((0.6 + 0.5) / 2) and scored[3].criteria_errors == 1
    assert scored[4].score is None and scored[4].criteria_errors == 3 and not scored[4].failed
    assert scored[3].criteria_results()["b"] == {
        "status": "error",
        "errorCode": "no_score",
        "errorMessage": "nothing for z",
        "version": "v1",
    }
    assert rank(scored) == [2, 3, 0, 4, 1]  # 0.575, 0.55, 0.5, then nothing scored, then the failed one


@pytest.mark.anyio
async def test_ties_keep_the_provider_order() -> None:
    scored = await score_all([(Fake("a", {"x": 0.5, "y": 0.7, "z": 0.5}), 1.0)], PROMPT, _answers("x", "z", "y", "x"))
    assert rank(scored) == [2, 0, 1, 3]


@pytest.mark.anyio
async def test_a_failing_criterion_gives_error_results_and_never_raises() -> None:
    good = Fake("good", {"x": 0.4, "y": 0.6})
    broken = Fake("broken", raises=RuntimeError("secret internals"))
    miscounted = Fake("miscounted", {"x": 0.1, "y": 0.1}, extra=1)
    hanging = Fake("hanging", {"x": 0.9, "y": 0.9}, wait_for=asyncio.Event())
    criteria_ = [(good, 1.0), (broken, 1.0), (miscounted, 1.0), (hanging, 1.0)]
    scored = await score_all(criteria_, PROMPT, _answers("x", "y"), timeout_s=0.05)
    for s in scored:
        assert s.criteria_errors == 3 and s.score == good.table["xy"[s.index]]
        assert s.results["broken"].error_code == "criterion_error"
        assert "RuntimeError" in str(s.results["broken"].error_message)
        assert "secret" not in str(s.results["broken"].error_message)
        assert s.results["miscounted"].error_message == "criterion 'miscounted' returned 3 results for 2 candidates"
        assert s.results["hanging"].error_code == "timeout" and s.results["hanging"].version == "v1"


@pytest.mark.anyio
async def test_criteria_run_concurrently() -> None:
    # Each criterion waits for the other to have started: run one after the other, they would time out.
    first_started, second_started = asyncio.Event(), asyncio.Event()
    one = Fake("one", {"x": 0.2}, sets=first_started, wait_for=second_started)
    two = Fake("two", {"x": 0.4}, sets=second_started, wait_for=first_started)
    [scored] = await score_all([(one, 1.0), (two, 1.0)], PROMPT, _answers("x"), timeout_s=5.0)
    assert scored.score == pytest.approx(0.3) and scored.criteria_errors == 0


@pytest.mark.anyio
async def test_no_produced_candidates_and_duplicate_slugs() -> None:
    a = Fake("a", {"x": 1.0})
    assert await score_all([(a, 1.0)], PROMPT, _answers(None, None)) == [
        Scored(0, None, {}, failed=True),
        Scored(1, None, {}, failed=True),
    ]
    assert a.calls == []
    with pytest.raises(ValueError, match="distinct slugs"):
        await score_all([(a, 1.0), (Fake("a"), 2.0)], PROMPT, _answers("x"))


# ---------------------------------------------------------------- resolution


@dataclass
class FakeResolver:
    kind: str
    known: dict[str, Criterion] = field(default_factory=dict)
    unavailable: bool = False

    async def resolve(self, ref: CriterionRef) -> Criterion | None:
        if self.unavailable:
            raise CriterionUnavailableError("reward_server_unavailable", "connection refused")
        if ref.slug in self.known and ref.version not in (None, 1):
            raise UnknownCriterionError(ref.id, available=["v1"])
        return self.known.get(ref.slug)


@pytest.mark.anyio
async def test_resolution_keeps_header_order_and_weights() -> None:
    a, b = Fake("a"), Fake("b")
    refs = parse_criteria_header('["b@v1", {"id": "a", "weight": 3}]')
    assert await resolve_criteria(refs, [FakeResolver("reward_model", {"a": a, "b": b})]) == [(b, 1.0), (a, 3.0)]


@pytest.mark.anyio
async def test_unknown_ids_and_versions_name_the_first_bad_one() -> None:
    resolver = FakeResolver("reward_model", {"a": Fake("a")})
    with pytest.raises(UnknownCriterionError, match=r"unknown criterion 'nope@v3'") as info:
        await resolve_criteria(parse_criteria_header('["a", "nope@v3", "other"]'), [resolver])
    assert info.value.criterion_id == "nope@v3" and isinstance(info.value, CriteriaError)
    with pytest.raises(UnknownCriterionError, match=r"unknown criterion version 'a@v2' \(available versions: v1\)"):
        await resolve_criteria(parse_criteria_header('["a@v2"]'), [resolver])


@pytest.mark.anyio
async def test_an_unreachable_backend_becomes_a_criterion_that_errors_not_a_400() -> None:
    [(failed, weight)] = await resolve_criteria(
        parse_criteria_header('[{"id": "rm@v2", "weight": 2}]'), [FakeResolver("reward_model", unavailable=True)]
    )
    assert failed == FailedCriterion("rm", "v2", "reward_model", "reward_server_unavailable", "connection refused")
    [scored] = await score_all([(failed, weight)], PROMPT, _answers("x"))
    assert scored.score is None and scored.results["rm"].to_json()["errorCode"] == "reward_server_unavailable"
