"""The chat-completions service behind POST /v1/chat/completions: transparent pass-through, and best-of-N.

Owns the request-scoped `ChatContext`, the order of the checks (everything the client got wrong fails with 400
BEFORE any upstream call, so nothing is wasted or half-stored), candidate scoring, ranking into choices, usage
sums and the one-transaction store write. Must not import starlette, torch, trainer or reward_serving internals.

Decisions: without `op-criteria` the upstream's JSON (or its SSE bytes) goes back as it came; `store: true` then
logs the one completion and adds `rewardgate.log_id`. Streamed, the bytes still pass through unchanged (regrouped
at event boundaries) while a copy is parsed to store the completion when the stream ends; there is then no log id
in the response (the upstream's chunks carry none), and a stream the client abandons is not stored. An upstream
failure after the first event ends the stream with an error event (gateway/sse.py). With criteria, `stream: true`
gets the ranked completion as `chat.completion.chunk` events once every candidate is scored (ranking needs them
whole): each choice's message in one delta, its `criteria_results` on its finishing chunk.
If every candidate fails, the request fails with the first failure's status (router.AllCandidatesFailed).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config import GatewaySettings
from gateway.criteria import (
    Criterion,
    CriterionResult,
    Scored,
    parse_criteria_header,
    rank,
    score_all,
)
from gateway.criteria_service import CriteriaService
from gateway.errors import InvalidRequestError, error_reply
from gateway.formats import Message, loose_message
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceError,
    ChoiceInfo,
    CompletionInfo,
    CriteriaUsage,
    Usage,
)
from gateway.router import Candidate, CandidateError, Router
from gateway.sse import StreamAccumulator, error_event, whole_events
from gateway.store import CandidateRecord, Latencies, LogStore, validate_metadata

logger = logging.getLogger(__name__)
_STREAM_FIELDS = frozenset({"stream", "stream_options"})  # best-of-N candidates are fetched whole


@dataclass(frozen=True)
class ChatContext:
    """One chat-completions request, parsed: what every step of the service reads."""

    request: ChatCompletionRequest
    raw: dict[str, Any]  # the body as received: what the log stores
    criteria_header: str | None  # op-criteria
    best_only: bool  # op-best-only: true
    started: float  # perf_counter at arrival, before the body is read
    waited: Waited = field(default_factory=lambda: Waited())  # filled in by the service


@dataclass
class Waited:
    """Seconds this request spent waiting on others: what the gateway's overhead metric subtracts."""

    upstream_s: float = 0.0
    scoring_s: float = 0.0


class _TimedCriterion:
    """A criterion that reports its latency and error results to the metrics."""

    def __init__(self, inner: Criterion, metrics: GatewayMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self.slug, self.version, self.kind = inner.slug, inner.version, inner.kind

    async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
        started = time.perf_counter()
        results = await self._inner.score(prompt, candidates)
        codes = [r.error_code or "error" for r in results if not r.ok]
        scores = [r.normalized for r in results if r.ok and r.normalized is not None]
        self._metrics.record_criterion(self.slug, time.perf_counter() - started, codes, scores)
        return results


def _sum_usage(candidates: Sequence[Candidate | CandidateError]) -> Usage:
    # Candidates of one native-n call share their response's usage object: count each response once.
    responses = {id(c.usage): c.usage for c in candidates if isinstance(c, Candidate) and c.usage}

    def total(key: str) -> int:
        return sum(int(u.get(key) or 0) for u in responses.values())

    return Usage(
        prompt_tokens=total("prompt_tokens"),
        completion_tokens=total("completion_tokens"),
        total_tokens=total("total_tokens"),
    )


class ChatService:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        router: Router,
        store: LogStore,
        criteria: CriteriaService,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._router = router
        self._store = store
        self._criteria = criteria
        self._metrics = metrics

    def _provider(self, model: str) -> str:
        return self._router.resolve(model)[0].name

    # ------------------------------------------------------------ pass-through

    async def passthrough(self, ctx: ChatContext) -> dict[str, Any]:
        """One upstream completion, returned as the upstream sent it (+ `rewardgate.log_id` with store: true)."""
        metadata = self._metadata(ctx)
        provider = self._provider(ctx.request.model)
        started = time.perf_counter()
        response = await self._router.complete(ctx.request.upstream_body(), self._settings.upstream_timeout_s)
        upstream_s = time.perf_counter() - started
        self._metrics.record_upstream(provider, upstream_s)
        if metadata is not None:
            records = [
                CandidateRecord(int(c.get("index", i)), c.get("message"), "ok", c.get("finish_reason"), rank=i)
                for i, c in enumerate(response["choices"])
                if isinstance(c, dict)
            ]
            log = await self._store.create_log(
                model=ctx.request.model,
                request=ctx.raw,
                candidates=records,
                latencies=self._latencies(ctx, upstream_s, None),
                metadata=metadata,
            )
            response["rewardgate"] = CompletionInfo(log_id=log.id, metadata=log.metadata).model_dump()
        ctx.waited.upstream_s = upstream_s
        return response

    async def stream(self, ctx: ChatContext) -> AsyncIterator[bytes]:
        """The upstream's SSE bytes. The first event is awaited here, so upstream errors still get their status;
        the returned generator closes the upstream in its `finally`, however the client leaves."""
        metadata = self._metadata(ctx)
        started = time.perf_counter()
        upstream = whole_events(self._router.stream(ctx.request.upstream_body(), self._settings.upstream_timeout_s))
        try:
            first = await anext(upstream, b"")
        except BaseException:
            await _aclose(upstream)
            raise
        copy = StreamAccumulator() if metadata is not None else None

        async def relay() -> AsyncIterator[bytes]:
            failure: str | None = None
            try:
                chunk = first
                while chunk:
                    if copy is not None:
                        copy.feed(chunk)
                    yield chunk
                    chunk = await anext(upstream, b"")
            except Exception as exc:  # the status line is gone: end the stream with an error event instead
                _, body, _ = error_reply(exc)
                failure = f"{body['error']['code']}: {body['error']['message']}"
                logger.warning("upstream stream failed after the first event: %s", failure)
                yield error_event(body)
            finally:
                await _aclose(upstream)
            if copy is not None and metadata is not None:
                await self._store_stream(ctx, copy, metadata, time.perf_counter() - started, failure)

        return relay()

    async def _store_stream(
        self, ctx: ChatContext, copy: StreamAccumulator, meta: dict[str, str], upstream_s: float, failure: str | None
    ) -> None:
        records = []
        if not copy.choices():  # a 200 whose body held no chunk: relayed as it came, stored as a failure
            empty = failure or f"the stream held no chat.completion.chunk events ({copy.unparsable} unparsable)"
            records.append(CandidateRecord(0, None, "error", None, empty, rank=0))
        for rank_, choice in enumerate(copy.choices()):
            finished = choice["finish_reason"] is not None and failure is None
            error = None if finished else failure or "the stream ended before this choice finished"
            status: Literal["ok", "error"] = "ok" if finished else "error"
            records.append(
                CandidateRecord(choice["index"], choice["message"], status, choice["finish_reason"], error, rank=rank_)
            )
        await self._store.create_log(
            model=ctx.request.model,
            request=ctx.raw,
            candidates=records,
            latencies=self._latencies(ctx, upstream_s, None),
            metadata=meta,
        )

    # ------------------------------------------------------------ best-of-N

    async def best_of_n(self, ctx: ChatContext) -> dict[str, Any]:
        assert ctx.criteria_header is not None
        # Every client error first: nothing reaches the upstream or the store before these pass.
        refs = parse_criteria_header(ctx.criteria_header)
        n = 1 if ctx.request.n is None else ctx.request.n
        if not 1 <= n <= self._settings.max_n:
            raise InvalidRequestError(
                f"n must be between 1 and {self._settings.max_n} with op-criteria, got {n}", param="n"
            )
        metadata = self._metadata(ctx)
        prompt = [loose_message(m, f"messages[{i}]") for i, m in enumerate(ctx.request.messages)]
        criteria = await self._criteria.resolve(refs)

        started = time.perf_counter()
        body = {k: v for k, v in ctx.request.upstream_body().items() if k not in _STREAM_FIELDS}
        candidates = await self._router.generate_candidates(body, n, self._settings.upstream_timeout_s)
        upstream_s = time.perf_counter() - started
        self._record_candidates(candidates)

        started = time.perf_counter()
        timed: list[tuple[Criterion, float]] = [(_TimedCriterion(c, self._metrics), w) for c, w in criteria]
        answers = [loose_message(c.choice.get("message"), "") if isinstance(c, Candidate) else None for c in candidates]
        scored = await score_all(timed, prompt, answers, timeout_s=self._settings.criteria_timeout_s)
        scoring_s = time.perf_counter() - started
        self._metrics.scoring_duration.observe(scoring_s)

        order = rank(scored)
        versions = {c.slug: c.version for c, _ in criteria}
        info = CompletionInfo(criteria=versions, n=n, best_only=ctx.best_only)
        if metadata is not None:
            log = await self._store.create_log(
                model=ctx.request.model,
                request=ctx.raw,
                candidates=[_record(candidates[k], scored[k], pos) for pos, k in enumerate(order)],
                latencies=self._latencies(ctx, upstream_s, scoring_s),
                metadata=metadata,
                criteria_versions={slug: v for slug, v in versions.items() if v is not None},
            )
            info = info.model_copy(update={"log_id": log.id, "metadata": log.metadata})
        choices = [_choice(candidates[k], scored[k], pos) for pos, k in enumerate(order)]
        usage = _sum_usage(candidates)
        live = sum(1 for a in answers if a is not None)
        spent = [r.usage for s in scored for r in s.results.values() if r.usage]
        usage.criteria = CriteriaUsage(
            criteria=len(criteria),
            scored_candidates=live,
            criterion_calls=live * len(criteria),
            prompt_tokens=sum(int(u.get("prompt_tokens", 0)) for u in spent),
            completion_tokens=sum(int(u.get("completion_tokens", 0)) for u in spent),
        )
        completion = ChatCompletion(
            id="chatcmpl-rg-" + secrets.token_hex(12),
            created=int(time.time()),
            model=ctx.request.model,
            choices=choices[:1] if ctx.best_only else choices,
            usage=usage,
            rewardgate=info,
        )
        ctx.waited.upstream_s, ctx.waited.scoring_s = upstream_s, scoring_s
        return completion.model_dump()

    # ------------------------------------------------------------ helpers

    def _metadata(self, ctx: ChatContext) -> dict[str, str] | None:
        """The validated metadata to store, or None when the request is not stored. Checked before the upstream."""
        metadata = validate_metadata(ctx.request.metadata or {})
        return metadata if ctx.request.store else None

    def _latencies(self, ctx: ChatContext, upstream_s: float, scoring_s: float | None) -> Latencies:
        total_s = time.perf_counter() - ctx.started
        return Latencies(upstream_s * 1000, None if scoring_s is None else scoring_s * 1000, total_s * 1000)

    def _record_candidates(self, candidates: Sequence[Candidate | CandidateError]) -> None:
        ok = [c for c in candidates if isinstance(c, Candidate)]
        self._metrics.record_candidates(len(ok), len(candidates) - len(ok))
        for response_latency in {(c.model, c.latency_s) for c in ok}:
            self._metrics.record_upstream(self._provider(response_latency[0]), response_latency[1])


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    if isinstance(iterator, AsyncGenerator):
        await iterator.aclose()


def _choice(candidate: Candidate | CandidateError, scored: Scored, position: int) -> Choice:
    info = ChoiceInfo(
        candidate_index=candidate.index,
        score=scored.score,
        criteria_errors=scored.criteria_errors,
        model=candidate.model,
    )
    if isinstance(candidate, CandidateError):
        error = ChoiceError(message=candidate.message, code=candidate.code, status=candidate.status)
        message = {"role": "assistant", "content": None}
        return Choice(index=position, message=message, finish_reason="error", rewardgate=info, error=error)
    extra = {k: v for k, v in candidate.choice.items() if k not in Choice.model_fields}
    return Choice(
        index=position,
        message=candidate.choice.get("message") or {},
        finish_reason=candidate.choice.get("finish_reason"),
        criteria_results=scored.criteria_results(),
        rewardgate=info,
        **extra,
    )


def _record(candidate: Candidate | CandidateError, scored: Scored, position: int) -> CandidateRecord:
    if isinstance(candidate, CandidateError):
        return CandidateRecord(
            candidate.index, None, "error", "error", f"{candidate.code}: {candidate.message}", rank=position
        )
    return CandidateRecord(
        candidate.index,
        candidate.choice.get("message"),
        "ok",
        candidate.choice.get("finish_reason"),
        score=scored.score,
        rank=position,
        criteria_results=scored.criteria_results(),
    )
