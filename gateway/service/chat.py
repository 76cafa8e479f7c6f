"""The chat-completions service behind POST /v1/chat/completions: pass-through (a JSON answer or a relayed stream)
and the best-of-N pipeline generate -> score -> rank -> record, with frozen hand-offs in and out.

The API layer parses every wire input into a `ChatRequest` before anything here runs (gateway.api.chat), so a
client error never reaches the upstream or the store. This module owns the order of the work, the one store
write per request, and the metrics of what it observes (upstream latency, candidates, scoring, each criterion).
Rendering (completion JSON, stream chunks, store records) is gateway.service.render's. Must not import starlette
or gateway.api.

Decisions: without criteria the upstream's JSON (or its SSE bytes) goes back as it came; `store: true` then logs
the one completion and the response carries `rewardgate.log_id`. Streamed, the bytes pass through unchanged
(regrouped at event boundaries) while a copy is parsed to store the completion when the stream ends; there is no
log id in the response then (the upstream's chunks carry none), and a stream the client abandons is not stored.
A failure after the first event is stored with the stream and raised to the caller, which ends the stream with an
error event. With criteria, every candidate is generated whole (ranking needs them whole), and if every candidate
fails the request fails with the first failure's status (gateway.upstream.router.AllCandidatesFailed).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from gateway.config import GatewaySettings
from gateway.criteria import Criterion, CriterionResult, Scored, rank, score_all
from gateway.formats import Message, loose_message
from gateway.metrics import GatewayMetrics
from gateway.service import render
from gateway.service.budget import BudgetedSampler, Calibration, Outcome, plain_report
from gateway.service.cache import ResponseCache, cache_key
from gateway.service.criteria import CriteriaService
from gateway.service.handoffs import ChatRequest, EarlyRejection, Passthrough, Ranked, Replayed, Reported
from gateway.store import CandidateRecord, Latencies, LogRecord, LogStore
from gateway.upstream.events import StreamAccumulator, whole_events
from gateway.upstream.providers import ProviderError
from gateway.upstream.router import AllCandidatesFailed, Candidate, CandidateError, Router

logger = logging.getLogger(__name__)


class ChatService:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        router: Router,
        store: LogStore,
        criteria: CriteriaService,
        metrics: GatewayMetrics,
        calibration: Calibration | None = None,
    ) -> None:
        self._settings = settings
        self._router = router
        self._store = store
        self._criteria = criteria
        self._metrics = metrics
        self._cache = ResponseCache(
            store, ttl_s=settings.cache_ttl_s, max_entries=settings.cache_max_entries, metrics=metrics
        )
        self._sampler = BudgetedSampler(router, timeout_s=settings.upstream_timeout_s)
        self._calibration = calibration or Calibration(min_rank_correlation=settings.bon_min_rank_correlation)

    async def passthrough(self, request: ChatRequest) -> Passthrough:
        """One upstream completion, returned as the upstream sent it (or as the response cache kept it)."""
        key = cache_key(request.upstream) if request.cache.read or request.cache.write else None
        if key is not None and request.cache.read and (hit := await self._cache.get(key)) is not None:
            log = None
            if request.metadata is not None:
                records = render.passthrough_records(hit)
                log = await self._record(request, records, 0.0, completion_id=_id(hit), cache_hit=True)
            return Passthrough(hit, 0.0, log, cache_hit=True)
        provider = self._provider(request.model)
        started = time.perf_counter()
        try:
            response = await self._router.complete(request.upstream, self._settings.upstream_timeout_s)
        finally:  # a failed call took its time too: the latency histogram must not look healthy while calls fail
            upstream_s = time.perf_counter() - started
            self._metrics.record_upstream(provider, upstream_s)
        if key is not None and request.cache.write:
            await self._cache.put(key, response)
        log = None
        if request.metadata is not None:
            records = render.passthrough_records(response)
            log = await self._record(request, records, upstream_s, completion_id=_id(response))
        return Passthrough(response, upstream_s, log)

    async def stream(self, request: ChatRequest) -> AsyncIterator[bytes]:
        """The upstream's SSE bytes. The first event is awaited here, so upstream errors still get their status;
        the returned generator closes the upstream in its `finally`, however the caller leaves."""
        started = time.perf_counter()
        upstream = whole_events(self._router.stream(request.upstream, self._settings.upstream_timeout_s))
        try:
            first = await anext(upstream, b"")
        except BaseException:
            await _aclose(upstream)
            raise
        copy = StreamAccumulator() if request.metadata is not None else None

        async def relay() -> AsyncIterator[bytes]:
            failure: BaseException | None = None
            try:
                chunk = first
                while chunk:
                    if copy is not None:
                        copy.feed(chunk)
                    yield chunk
                    chunk = await anext(upstream, b"")
            except Exception as exc:
                failure = exc
                logger.warning("upstream stream failed after the first event: %s", _describe(exc))
            finally:
                await _aclose(upstream)
            if copy is not None:
                failed = None if failure is None else _describe(failure)
                records = render.stream_records(copy.choices(), failed, copy.unparsable)
                await self._record(request, records, time.perf_counter() - started)
            if failure is not None:
                raise failure

        return relay()

    async def best_of_n(self, request: ChatRequest) -> Ranked | Replayed:
        """n candidates from the upstream, scored by every criterion, ranked, stored when asked. With op-cache, an
        identical earlier request's ranking (same criteria versions) answers instead, with no upstream call."""
        assert request.best_of_n is not None, "a pass-through request has no criteria"
        wanted = request.best_of_n
        criteria = await self._criteria.resolve(wanted.criteria)
        key = None
        if request.cache.read or request.cache.write:
            key = cache_key(request.upstream, [(c.slug, c.version, weight) for c, weight in criteria])
            if request.cache.read and (hit := await self._cache.get(key)) is not None:
                return await self._replay(request, hit)

        budget = None
        if wanted.budget is None:
            candidates, scored, order, upstream_s, scoring_s = await self._plain(request, criteria)
        else:
            outcome = await self._budgeted(request, criteria)
            candidates, scored, order = list(outcome.candidates), list(outcome.scored), outcome.order
            upstream_s, scoring_s, budget = outcome.upstream_s, outcome.scoring_s, outcome.report
        versions = {c.slug: c.version for c, _ in criteria}
        completion_id = "chatcmpl-rg-" + secrets.token_hex(12)
        log = None
        if request.metadata is not None:
            records = render.best_of_n_records(candidates, scored, order)
            spent = None if budget is None else render.budget_usage(budget, len(candidates)).model_dump()
            log = await self._record(
                request, records, upstream_s, scoring_s, versions, completion_id=completion_id, budget=spent
            )
        ranked = Ranked(
            id=completion_id,
            created=int(time.time()),
            request=request,
            candidates=tuple(candidates),
            scored=tuple(scored),
            order=order,
            versions=versions,
            upstream_s=upstream_s,
            scoring_s=scoring_s,
            log=log,
            budget=budget,
        )
        whole = (
            budget is None
            and all(isinstance(c, Candidate) for c in candidates)
            and all(r.ok for s in scored for r in s.results.values())
        )
        # a degraded ranking is never replayed, nor a budgeted one (its rejected candidates are this request's)
        if key is not None and request.cache.write and whole:
            await self._cache.put(key, render.ranked_completion(ranked))
        return ranked

    async def _plain(
        self, request: ChatRequest, criteria: Sequence[tuple[Criterion, float]]
    ) -> tuple[list[Candidate | CandidateError], list[Scored], tuple[int, ...], float, float]:
        """Plain best-of-N: n whole candidates (native n where the provider has it), then every one scored."""
        assert request.best_of_n is not None
        started = time.perf_counter()
        try:
            candidates = await self._router.generate_candidates(
                request.upstream, request.best_of_n.n, self._settings.upstream_timeout_s
            )
        except AllCandidatesFailed as failed:  # counted too: a dashboard must not show health while all fail
            self._record_candidates(failed.errors)
            raise
        upstream_s = time.perf_counter() - started
        self._record_candidates(candidates)

        started = time.perf_counter()
        answers = [_answer(c) for c in candidates]
        scored = await self._score(request, criteria, answers)
        scoring_s = time.perf_counter() - started
        self._metrics.scoring_duration.observe(scoring_s)
        return candidates, scored, tuple(rank(scored)), upstream_s, scoring_s

    async def _score(
        self, request: ChatRequest, criteria: Sequence[tuple[Criterion, float]], answers: Sequence[Message | None]
    ) -> list[Scored]:
        assert request.best_of_n is not None
        return await score_all(
            criteria,
            request.best_of_n.prompt,
            answers,
            timeout_s=self._settings.criteria_timeout_s,
            on_scored=self._record_criterion,
        )

    async def _budgeted(self, request: ChatRequest, criteria: Sequence[tuple[Criterion, float]]) -> Outcome:
        """An op-bon strategy (gateway.service.budget), or plain best-of-N where calibration says partial scores of
        these criteria do not predict final ones; counted in the op-bon metrics either way."""
        wanted = request.best_of_n
        assert wanted is not None and wanted.budget is not None
        policy = wanted.budget

        async def score(answers: Sequence[Message | None]) -> list[Scored]:
            started = time.perf_counter()
            scored = await self._score(request, criteria, answers)
            self._metrics.scoring_duration.observe(time.perf_counter() - started)
            return scored

        try:
            if isinstance(policy, EarlyRejection):
                plan = self._calibration.plan(policy, criteria)
                if isinstance(plan, str):  # why plain best-of-N runs instead
                    candidates, scored, order, upstream_s, scoring_s = await self._plain(request, criteria)
                    report = plain_report(policy.strategy, candidates, plan)
                    outcome = Outcome(tuple(candidates), tuple(scored), order, report, upstream_s, scoring_s)
                else:
                    outcome = await self._sampler.early_rejection(request, wanted.n, plan, score)
            else:
                outcome = await self._sampler.adaptive(request, wanted.n, policy, score)
        except AllCandidatesFailed as failed:
            self._record_candidates(failed.errors)
            raise
        if outcome.report.fallback is None:
            self._record_candidates(outcome.candidates)
        report = outcome.report
        self._metrics.record_budget(
            report.strategy,
            generated=report.generated_tokens,
            plain=report.plain_tokens,
            saved=report.tokens_saved,
            rejected=len(report.rejected_at),
            fallback=report.fallback is not None,
        )
        return outcome

    async def report(self, reported: Reported) -> LogRecord:
        """A completion the client got elsewhere (OpenPipe's /report), stored like one of ours: its choices become
        candidates, so it feeds datasets and pairs like the rest."""
        latency_ms = reported.latency_ms
        return await self._store.create_log(
            model=reported.model,
            request=reported.request,
            candidates=render.reported_records(reported.response, reported.error),
            latencies=Latencies(upstream_ms=latency_ms, total_ms=latency_ms),
            metadata=reported.metadata,
            completion_id=_id(reported.response),
        )

    # ------------------------------------------------------------ helpers

    async def _replay(self, request: ChatRequest, completion: Mapping[str, Any]) -> Replayed:
        """A cached ranking as this request's answer; stored (when asked) as a cache hit with its scores."""
        log = None
        if request.metadata is not None:
            records = render.replayed_records(completion)
            versions = (completion.get("rewardgate") or {}).get("criteria") or {}
            completion_id = _id(completion)
            log = await self._record(request, records, 0.0, 0.0, versions, completion_id=completion_id, cache_hit=True)
        return Replayed(completion, request, log)

    async def _record(
        self,
        request: ChatRequest,
        records: Sequence[CandidateRecord],
        upstream_s: float,
        scoring_s: float | None = None,
        criteria_versions: Mapping[str, str | None] | None = None,
        *,
        completion_id: str | None = None,
        cache_hit: bool = False,
        budget: Mapping[str, Any] | None = None,
    ) -> LogRecord:
        total_s = time.perf_counter() - request.started
        latencies = render.latencies(upstream_s, scoring_s, total_s)
        return await self._store.create_log(
            model=request.model,
            request=request.raw,
            candidates=records,
            latencies=latencies,
            metadata=request.metadata,
            criteria_versions={slug: v for slug, v in (criteria_versions or {}).items() if v is not None},
            completion_id=completion_id,
            cache_hit=cache_hit,
            budget=budget,
        )

    def _provider(self, model: str) -> str:
        return self._router.resolve(model)[0].name

    def _record_candidates(self, candidates: Sequence[Candidate | CandidateError]) -> None:
        """Candidates by outcome, and each upstream call's latency once (a native-n call made several)."""
        produced = sum(1 for c in candidates if isinstance(c, Candidate))
        self._metrics.record_candidates(produced, len(candidates) - produced)
        for model, latency_s in {(c.model, c.latency_s) for c in candidates}:
            self._metrics.record_upstream(self._provider(model), latency_s)

    def _record_criterion(self, criterion: Criterion, seconds: float, results: Sequence[CriterionResult]) -> None:
        codes = [r.error_code or "error" for r in results if not r.ok]
        scores = [r.normalized for r in results if r.ok and r.normalized is not None]
        self._metrics.record_criterion(criterion.slug, seconds, codes, scores)


def _answer(candidate: Candidate | CandidateError) -> Message | None:
    """The candidate's message as the criteria read it; None for one the provider failed to produce."""
    return loose_message(candidate.choice.get("message"), "") if isinstance(candidate, Candidate) else None


def _id(completion: object) -> str | None:
    """A completion's `id`, when it has a string one."""
    value = completion.get("id") if isinstance(completion, Mapping) else None
    return value if isinstance(value, str) else None


def _describe(exc: BaseException) -> str:
    """A stored stream's failure: the error code and message a client was sent in the error event."""
    if isinstance(exc, ProviderError):
        return f"{exc.code}: {exc}"
    return f"internal_error: {type(exc).__name__}"


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    if isinstance(iterator, AsyncGenerator):
        await iterator.aclose()
