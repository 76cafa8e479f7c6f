"""Budgeted best-of-N (`op-bon`): the same pick as plain best-of-N for fewer generated tokens.

Early rejection (after "Fast Best-of-N Decoding via Speculative Rejection", Sun et al. 2024): the n candidates
stream, one upstream stream each (gateway.upstream.streams: one candidate of a native-n stream cannot be stopped
alone); at each checkpoint, once every live candidate has that many tokens or has ended, the partial answers are
scored by the request's criteria (one batched call per reward model) and all but the best `keep` fraction (at least
`min_keep`) are cancelled: their upstream streams are closed, so the provider stops generating them. A candidate
that already finished is never cancelled (nothing to save; its final score ranks it). A checkpoint where no
candidate could be scored (every criterion errored) rejects nothing. Rejected candidates are returned and stored
with `finish_reason: "rejected"`, the partial answer that was scored and its partial scores, ranked after every
finished candidate (those that lasted longer first, then by partial score) and before failed ones.

Adaptive N: candidates come in rounds of `per_round` (streams too, so their tokens are counted the same way), each
round scored as it ends; no new round starts once the best combined score reaches `threshold`, n candidates were
asked for, `max_tokens` completion tokens were generated or `max_latency_s` passed (a round that started runs to
its end).

Tokens saved: plain best-of-N's tokens are estimated as n x the mean completion tokens of the candidates that
finished on their own (rejected and failed ones excluded); saved = max(0, estimate - generated).

Calibration: early rejection is only as good as partial scores predict final ones, which depends on the reward
model. `Calibration` holds, per criterion (`slug@version`, or `slug` for every version), what bench/budgeted_bon.py
measured on its calibration prompts (setting `bon_calibration_file`): the mean per-prompt Spearman rank correlation
of the score at t tokens with the final score, and the early-rejection setting that saved the most tokens with the
pick's reward within a stated loss (`within_pct`), or null where none did. `Calibration.plan` decides what a request
runs:
- op-bon gave neither `checkpoints` nor `keep`, and exactly one criterion of the request has a measured setting:
  that setting as measured (it was measured whole, so no checkpoint is dropped), or plain best-of-N where the
  measurement found none (`usage.rewardgate.fallback` says so);
- otherwise the request's checkpoints and keep (DEFAULT_* for those left out), each checkpoint used only where every
  calibrated criterion of the request reaches `bon_min_rank_correlation` (the measurement at the largest measured
  t <= the checkpoint; none measured that early: not used). With no checkpoint left the request runs plain best-of-N
  and says why. A criterion with no calibration entry is trusted.

Must not import starlette or gateway.api.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.criteria import Criterion, Scored, rank
from gateway.formats import Message, loose_message
from gateway.service.handoffs import AdaptiveN, BudgetReport, ChatRequest, EarlyRejection
from gateway.upstream.router import AllCandidatesFailed, Candidate, CandidateError, Router
from gateway.upstream.streams import CandidateStream

# Scores the answers given (None: no answer), one Scored per answer in order; the service's score_all closure.
ScoreAnswers = Callable[[Sequence[Message | None]], Awaitable[list[Scored]]]


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class MeasuredSetting:
    """The early-rejection setting calibration measured for a reward model: `checkpoints` and `keep` saved the most
    tokens with the pick's reward within `within_pct` of plain best-of-N's (both None: no setting did)."""

    within_pct: float
    checkpoints: tuple[int, ...] | None = None
    keep: float | None = None


@dataclass(frozen=True)
class RejectionPlan:
    """What early rejection runs for one request, and where its setting came from (`usage.rewardgate.setting`)."""

    checkpoints: tuple[int, ...]
    keep: float
    min_keep: int
    setting: str  # "request" (op-bon gave checkpoints or keep), "calibration <criterion id>" or "default"


def _entry(table: Mapping[str, Any], criterion: Criterion) -> Any:
    """The criterion's entry: its `slug@version`, else its `slug` (every version); None without one."""
    found = table.get(f"{criterion.slug}@{criterion.version}")
    return found if found is not None else table.get(criterion.slug)


@dataclass(frozen=True)
class Calibration:
    """Per criterion id (`slug@version` or `slug`): {checkpoint tokens: mean per-prompt Spearman correlation}, and
    the measured early-rejection setting of the ids that have one."""

    correlations: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    min_rank_correlation: float = 0.5
    settings: Mapping[str, MeasuredSetting] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, min_rank_correlation: float) -> Calibration:
        """The file bench/budgeted_bon.py writes: {"criteria": {"slug@v1": {"checkpoints": {"16": 0.4, ...},
        "early_rejection": {"within_pct": 2.0, "setting": {"checkpoints": [64, 128], "keep": 0.5} or null}}}}
        ("early_rejection" optional)."""
        data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = data.get("criteria") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: expected {{'criteria': {{id: {{'checkpoints': {{tokens: rho}}}}}}}}")
        correlations: dict[str, dict[int, float]] = {}
        settings: dict[str, MeasuredSetting] = {}
        for ident, entry in entries.items():
            points = entry.get("checkpoints") if isinstance(entry, dict) else None
            if not isinstance(points, dict):
                raise ValueError(f"{path}: criteria[{ident!r}] needs a 'checkpoints' object")
            correlations[ident] = {int(t): float(rho) for t, rho in points.items() if rho is not None}
            if entry.get("early_rejection") is not None:
                settings[ident] = _measured(entry["early_rejection"], f"{path}: criteria[{ident!r}].early_rejection")
        return cls(correlations, min_rank_correlation, settings)

    def plan(self, policy: EarlyRejection, criteria: Sequence[tuple[Criterion, float]]) -> RejectionPlan | str:
        """The setting a request's early rejection runs, or why plain best-of-N runs instead."""
        if policy.checkpoints is None and policy.keep is None:
            measured = {(c.slug, c.version): m for c, _ in criteria if (m := _entry(self.settings, c)) is not None}
            if len(measured) == 1:
                (((slug, version), found),) = measured.items()
                if found.checkpoints is None or found.keep is None:
                    why = f"no early-rejection setting kept the pick's reward within {found.within_pct:g} %"
                    return f"calibration of {slug}@{version}: {why}"
                return RejectionPlan(found.checkpoints, found.keep, policy.min_keep, f"calibration {slug}@{version}")
        given = policy.checkpoints is not None or policy.keep is not None
        checkpoints, refused = self.checkpoints(policy.checkpoints or EarlyRejection.DEFAULT_CHECKPOINTS, criteria)
        if refused is not None:
            return refused
        keep = EarlyRejection.DEFAULT_KEEP if policy.keep is None else policy.keep
        return RejectionPlan(checkpoints, keep, policy.min_keep, "request" if given else "default")

    def correlation(self, criterion: Criterion, tokens: int) -> float | None:
        """The criterion's measured correlation that applies at `tokens`; None when it has no entry (trusted),
        -inf when it was measured only later than `tokens` (not trusted)."""
        table = _entry(self.correlations, criterion)
        if table is None:
            return None
        measured = [t for t in table if t <= tokens]
        return table[max(measured)] if measured else -math.inf

    def checkpoints(
        self, wanted: Sequence[int], criteria: Sequence[tuple[Criterion, float]]
    ) -> tuple[tuple[int, ...], str | None]:
        """The checkpoints every criterion's partial scores predict, and why none are left (None if some are)."""
        kept, reasons = [], []
        for tokens in wanted:
            weak = [
                (criterion, rho)
                for criterion, _ in criteria
                if (rho := self.correlation(criterion, tokens)) is not None and rho < self.min_rank_correlation
            ]
            if not weak:
                kept.append(tokens)
                continue
            criterion, rho = weak[0]
            measured = "not measured this early" if rho == -math.inf else f"rank correlation {rho:.2f}"
            reasons.append(f"{criterion.slug}@{criterion.version} at {tokens} tokens: {measured}")
        if kept:
            return tuple(kept), None
        floor = self.min_rank_correlation
        return (), f"partial scores do not predict final ones (< {floor:g}): " + "; ".join(reasons)


def _measured(raw: Any, where: str) -> MeasuredSetting:
    within = raw.get("within_pct") if isinstance(raw, dict) else None
    if isinstance(within, bool) or not isinstance(within, int | float):
        raise ValueError(f"{where}: needs 'within_pct' (a number) and 'setting' (an object or null)")
    setting = raw.get("setting")
    if setting is None:
        return MeasuredSetting(float(within))
    checkpoints, keep = (setting.get("checkpoints"), setting.get("keep")) if isinstance(setting, dict) else (None, None)
    if (
        not isinstance(checkpoints, list)
        or not checkpoints
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in checkpoints)
        or checkpoints != sorted(set(checkpoints))
        or isinstance(keep, bool)
        or not isinstance(keep, int | float)
        or not 0 < keep <= 1
    ):
        raise ValueError(f"{where}.setting: expected increasing token counts >= 1 and 0 < keep <= 1, got {setting!r}")
    return MeasuredSetting(float(within), tuple(checkpoints), float(keep))


# ---------------------------------------------------------------- the strategies


@dataclass(frozen=True)
class Outcome:
    """What a strategy produced, in the shape of plain best-of-N's (positions = candidate indexes)."""

    candidates: tuple[Candidate | CandidateError, ...]
    scored: tuple[Scored, ...]
    order: tuple[int, ...]
    report: BudgetReport
    upstream_s: float  # time waiting on the upstream streams (not overlapping scoring)
    scoring_s: float


@dataclass
class _Clock:
    """The waits of one request, split into upstream and scoring."""

    upstream_s: float = 0.0
    scoring_s: float = 0.0

    async def upstream(self, waits: Iterable[Awaitable[None]]) -> None:
        started = time.perf_counter()
        try:
            await asyncio.gather(*waits)
        finally:
            self.upstream_s += time.perf_counter() - started

    async def score(self, score: ScoreAnswers, answers: Sequence[Message | None]) -> list[Scored]:
        started = time.perf_counter()
        try:
            return await score(answers)
        finally:
            self.scoring_s += time.perf_counter() - started


class BudgetedSampler:
    """Runs early rejection and adaptive N against the router; scoring is the caller's (`score`)."""

    def __init__(self, router: Router, *, timeout_s: float) -> None:
        self._router = router
        self._timeout_s = timeout_s

    def _open(self, request: ChatRequest, index: int) -> CandidateStream:
        stream = self._router.candidate_stream(request.upstream, index, self._timeout_s)
        stream.start()
        return stream

    async def early_rejection(self, request: ChatRequest, n: int, plan: RejectionPlan, score: ScoreAnswers) -> Outcome:
        clock = _Clock()
        streams: list[CandidateStream] = []
        # index -> (the partial message that was scored, its partial score, its tokens then)
        rejected: dict[int, tuple[dict[str, Any], Scored, int]] = {}
        try:
            for i in range(n):  # appended one by one: a failure part-way still closes the ones started
                streams.append(self._open(request, i))
            live = list(streams)
            for checkpoint in plan.checkpoints:
                await clock.upstream(s.reach(checkpoint) for s in live)
                live = [s for s in live if s.error is None and (s.finished or not s.ended)]
                keep = max(plan.min_keep, math.ceil(len(live) * plan.keep))
                if keep >= len(live) or all(s.ended for s in live):
                    continue
                messages = [s.message() for s in live]
                tokens = [s.tokens for s in live]
                scored = await clock.score(score, [loose_message(m, "") for m in messages])
                if all(x.score is None for x in scored):
                    continue  # nothing could judge them: reject nothing
                out = [k for k in rank(scored)[keep:] if not live[k].ended]
                for k in out:
                    rejected[live[k].index] = (messages[k], replace(scored[k], index=live[k].index), tokens[k])
                await asyncio.gather(*(live[k].cancel() for k in out))
                live = [s for s in live if s.index not in rejected]
            await clock.upstream(s.reach(math.inf) for s in live)
        finally:  # whatever is still open (a failure, the client gone) is closed now, not left generating
            await asyncio.gather(*(s.cancel() for s in streams))

        candidates = [_candidate(s, rejected.get(s.index)) for s in streams]
        _raise_if_all_failed(candidates)
        finals = await clock.score(
            score, [_answer(c) if s.index not in rejected else None for s, c in zip(streams, candidates, strict=True)]
        )
        scored_all = [rejected[k][1] if k in rejected else replace(finals[k], index=k) for k in range(len(candidates))]
        order = budget_order(candidates, scored_all, {k: t for k, (_, _, t) in rejected.items()})
        report = replace(
            _report(
                "early_rejection", n, streams, {k: t for k, (_, _, t) in rejected.items()}, checkpoints=plan.checkpoints
            ),
            keep=plan.keep,
            setting=plan.setting,
        )
        return Outcome(tuple(candidates), tuple(scored_all), order, report, clock.upstream_s, clock.scoring_s)

    async def adaptive(self, request: ChatRequest, n: int, policy: AdaptiveN, score: ScoreAnswers) -> Outcome:
        clock = _Clock()
        started = time.perf_counter()
        streams: list[CandidateStream] = []
        candidates: list[Candidate | CandidateError] = []
        scored: list[Scored] = []
        rounds = 0
        while len(streams) < n:
            if rounds and _enough(policy, scored, streams, time.perf_counter() - started):
                break
            batch: list[CandidateStream] = []
            try:
                for j in range(min(policy.per_round, n - len(streams))):
                    batch.append(self._open(request, len(streams) + j))
                await clock.upstream(s.reach(math.inf) for s in batch)
            finally:
                await asyncio.gather(*(s.cancel() for s in batch))
            made = [_candidate(s, None) for s in batch]
            new = await clock.score(score, [_answer(c) for c in made])
            streams += batch
            candidates += made
            scored += [replace(x, index=s.index) for x, s in zip(new, batch, strict=True)]
            rounds += 1
        _raise_if_all_failed(candidates)
        order = budget_order(candidates, scored, {})
        report = _report("adaptive", n, streams, {}, rounds=rounds)
        return Outcome(tuple(candidates), tuple(scored), order, report, clock.upstream_s, clock.scoring_s)


def _enough(policy: AdaptiveN, scored: Sequence[Scored], streams: Sequence[CandidateStream], elapsed: float) -> bool:
    best = max((x.score for x in scored if x.score is not None), default=None)
    if best is not None and best >= policy.threshold:
        return True
    if policy.max_tokens is not None and sum(s.tokens for s in streams) >= policy.max_tokens:
        return True
    return policy.max_latency_s is not None and elapsed >= policy.max_latency_s


def _candidate(
    stream: CandidateStream, rejected: tuple[dict[str, Any], Scored, int] | None
) -> Candidate | CandidateError:
    """A stream's end as a candidate: finished, rejected (its scored partial answer), or failed."""
    usage = stream.usage if stream.finished and stream.usage else None
    if usage is None:
        usage = {"prompt_tokens": 0, "completion_tokens": stream.tokens, "total_tokens": stream.tokens}
    if rejected is not None:
        message, _, _ = rejected
        choice = {"index": stream.index, "message": dict(message), "finish_reason": "rejected"}
        return Candidate(stream.index, choice, stream.model, usage, stream.latency_s)
    if stream.finished:
        return Candidate(stream.index, stream.choice(), stream.model, usage, stream.latency_s)
    error = stream.error
    if error is None:
        why = f"{stream.model}: the stream ended before the candidate finished"
        return CandidateError(stream.index, "incomplete_stream", why, 502, stream.model, None, stream.latency_s)
    retry_after = getattr(error, "retry_after", None)
    return CandidateError(
        stream.index, error.code, str(error), error.status, stream.model, retry_after, stream.latency_s
    )


def _answer(candidate: Candidate | CandidateError) -> Message | None:
    return loose_message(candidate.choice.get("message"), "") if isinstance(candidate, Candidate) else None


def _raise_if_all_failed(candidates: Sequence[Candidate | CandidateError]) -> None:
    errors = [c for c in candidates if isinstance(c, CandidateError)]
    if errors and len(errors) == len(candidates):
        raise AllCandidatesFailed(errors)


def budget_order(
    candidates: Sequence[Candidate | CandidateError], scored: Sequence[Scored], rejected_at: Mapping[int, int]
) -> tuple[int, ...]:
    """Finished candidates by the combination rule's ranking; then rejected ones (the longest-lived first, then by
    partial score); then failed ones."""
    finished = [k for k, c in enumerate(candidates) if isinstance(c, Candidate) and k not in rejected_at]
    failed = [k for k, c in enumerate(candidates) if isinstance(c, CandidateError)]
    by_partial = sorted(rejected_at, key=lambda k: (-rejected_at[k], -(scored[k].score or 0.0), k))
    return (*(finished[j] for j in rank([scored[k] for k in finished])), *by_partial, *failed)


def _report(
    strategy: str,
    n: int,
    streams: Sequence[CandidateStream],
    rejected_at: Mapping[int, int],
    *,
    checkpoints: tuple[int, ...] = (),
    rounds: int = 1,
) -> BudgetReport:
    tokens = {s.index: s.tokens for s in streams}
    whole = [s.tokens for s in streams if s.finished and s.index not in rejected_at]
    generated = sum(tokens.values())
    plain = round(n * sum(whole) / len(whole)) if whole else generated
    return BudgetReport(strategy, strategy, generated, plain, tokens, dict(rejected_at), checkpoints, rounds)


def plain_report(requested: str, candidates: Sequence[Candidate | CandidateError], reason: str) -> BudgetReport:
    """The report of plain best-of-N run in place of a strategy (a fallback): nothing saved."""
    responses = {id(c.usage): c.usage for c in candidates if isinstance(c, Candidate) and c.usage}
    generated = sum(int(u.get("completion_tokens") or 0) for u in responses.values())
    return BudgetReport("best_of_n", requested, generated, generated, {}, {}, (), 1, reason)
