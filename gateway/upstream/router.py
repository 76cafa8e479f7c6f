"""Model names -> providers, and best-of-N candidates: retries, fallbacks, partial results.

Owns the model-name rules, the refusal of client-chosen upstreams, retry/backoff (honouring Retry-After) and fallback
models; calls providers only through `gateway.upstream.providers.ChatProvider`. Knows nothing of criteria, the
store or HTTP serving: must not import gateway.criteria, gateway.store, gateway.service, gateway.api, starlette,
torch, transformers or trainer.

Decisions: `provider:model` and `provider/model` split at the first `:` or `/` (`vllm:meta-llama/Llama-3.1-8B` ->
provider `vllm`, model `meta-llama/Llama-3.1-8B`); a bare name goes to the default provider, so an unchanged OpenAI
client works (fine-tunes are written `openai:ft:...`). Retries and fallbacks apply to `complete` and candidates,
not to streams. The timeout is per attempt, so one candidate takes at most about
attempts x (timeout + backoff) per model. Native `n` when the provider honours it, else N parallel calls in a
TaskGroup: cancelling the caller (a client gone) cancels every upstream call. Candidates that failed after the
primary model are retried, alone, on each fallback model in order. `candidate_stream` opens one candidate as its own
stream (n = 1) for budgeted best-of-N: with a client `seed` s, candidate i is sent seed s + i, so that N streams are N
samples and not one sample N times (a native-n call with seed s is one call, so it needs no such care).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Self

from gateway.upstream.providers import (
    ChatProvider,
    ForbiddenFieldError,
    ProviderConfig,
    ProviderError,
    UnknownModelError,
    UpstreamError,
    build_provider,
    credentials_hint,
)
from gateway.upstream.streams import CandidateStream

logger = logging.getLogger(__name__)

# Body fields that would let a client pick the upstream, its credentials or extra headers: refused, never forwarded.
FORBIDDEN_FIELDS = frozenset(
    [
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "custom_llm_provider",
        "headers",
        "extra_headers",
        "organization",
    ]
)


@dataclass(frozen=True)
class Candidate:
    index: int
    choice: dict[str, Any]  # the upstream's choice object, `index` rewritten to this candidate's
    model: str  # the model name that produced it: the requested one or a fallback
    usage: dict[str, Any] | None  # of the upstream response it came from (shared by all choices of a native-n call)
    latency_s: float  # of that upstream call, retries included


@dataclass(frozen=True)
class CandidateError:
    index: int
    code: str
    message: str
    status: int
    model: str  # the last model tried for this candidate
    retry_after: str | None = None  # the upstream's Retry-After, when it sent one
    latency_s: float = 0.0  # of the failed upstream call, retries included


class AllCandidatesFailed(ProviderError):
    code = "all_candidates_failed"

    def __init__(self, errors: Sequence[CandidateError]) -> None:
        self.errors = tuple(errors)
        self.status = errors[0].status
        self.retry_after = next((e.retry_after for e in errors if e.retry_after), None)
        super().__init__(f"all {len(errors)} candidates failed; first: {errors[0].message}")


def split_model_name(name: str) -> tuple[str | None, str]:
    """`provider:model` or `provider/model` -> (provider, model), cut at the first separator; bare -> (None, name)."""
    cuts = [i for i in (name.find(":"), name.find("/")) if i >= 0]
    if not cuts:
        return None, name
    cut = min(cuts)
    if cut == 0 or cut == len(name) - 1:
        raise UnknownModelError(f"model {name!r} must be 'provider:model', 'provider/model' or a bare model name")
    return name[:cut], name[cut + 1 :]


def parse_retry_after(value: str, now: float) -> float | None:
    """Retry-After in seconds or as an HTTP date (RFC 9110), relative to `now` (Unix time); None if unreadable."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # calls per model, the first included
    base_delay: float = 0.5  # backoff without Retry-After: base * 2**(attempt-1), capped, half of it jittered
    max_delay: float = 8.0
    max_retry_after: float = 30.0  # a longer Retry-After is cut to this


class Router:
    """Model name -> provider; plain completions and streams; best-of-N candidates with retries and fallbacks."""

    def __init__(
        self,
        providers: Mapping[str, ChatProvider],
        *,
        default_provider: str | None = "openai",
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if default_provider is not None and default_provider not in providers:
            raise ValueError(f"default provider {default_provider!r} is not configured")
        self._providers = dict(providers)
        self._default = default_provider
        self._fallbacks = {model: tuple(chain) for model, chain in (fallbacks or {}).items()}
        for chain in self._fallbacks.values():
            for model in chain:
                self.resolve(model)  # a bad fallback fails at start-up, not in the middle of a request
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    @classmethod
    def from_configs(cls, configs: Sequence[ProviderConfig], **kwargs: Any) -> Router:
        return cls({config.name: build_provider(config) for config in configs}, **kwargs)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Router(providers={sorted(self._providers)!r}, default={self._default!r})"

    async def start(self) -> None:
        started: list[ChatProvider] = []
        try:
            for provider in self._providers.values():
                await provider.start()
                started.append(provider)
        except BaseException:
            await asyncio.gather(*(provider.close() for provider in started))
            raise

    async def close(self) -> None:
        await asyncio.gather(*(provider.close() for provider in self._providers.values()))

    def resolve(self, model: str) -> tuple[ChatProvider, str]:
        """The provider that serves `model` and the model's name upstream."""
        name, upstream = split_model_name(model)
        if name is None and self._default is None:
            raise UnknownModelError(f"model {model!r} names no provider and there is no default provider")
        provider = self._providers.get(name or str(self._default))
        if provider is None:
            hint = credentials_hint(str(name))
            raise UnknownModelError(
                f"unknown provider {name!r} in model {model!r}; configured: {sorted(self._providers)}{hint}"
            )
        return provider, upstream

    def _prepare(self, body: Mapping[str, Any], *, streaming: bool = False) -> dict[str, Any]:
        """A copy of the body to send on, or an error if it tries to choose the upstream. Non-streaming calls drop
        `stream: true` and its options; everything else (vendor extensions included) goes on as is."""
        forbidden = sorted(FORBIDDEN_FIELDS.intersection(body))
        if forbidden:
            raise ForbiddenFieldError(
                f"request fields {forbidden} are not allowed: the gateway's config sets upstreams", field=forbidden[0]
            )
        if not isinstance(body.get("model"), str):
            raise UnknownModelError("the request has no model name")
        if streaming or not body.get("stream"):
            return dict(body)
        return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}

    async def complete(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """One non-streaming completion: retries, then each configured fallback model in order."""
        request = self._prepare(body)
        *fallible, last = (request["model"], *self._fallbacks.get(request["model"], ()))
        for model in fallible:
            try:
                return await self._complete(model, request, timeout)
            except UpstreamError as err:
                logger.warning("%s failed (%s); trying the next fallback model", model, err)
        return await self._complete(last, request, timeout)

    async def _complete(self, model: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        provider, upstream = self.resolve(model)
        return await self._with_retries(provider, model, {**request, "model": upstream}, timeout)

    def stream(self, body: Mapping[str, Any], timeout: float) -> AsyncIterator[bytes]:
        """Raw SSE bytes. Name and field errors raise here; upstream errors on the first iteration."""
        request = self._prepare(body, streaming=True)
        provider, upstream = self.resolve(request["model"])
        return provider.stream({**request, "model": upstream, "stream": True}, timeout)

    def candidate_stream(self, body: Mapping[str, Any], index: int, timeout: float) -> CandidateStream:
        """Candidate `index` as its own stream, not yet started (see gateway.upstream.streams). No retries or
        fallbacks: a stream that fails is a failed candidate. Name and field errors raise here."""
        request = self._prepare(body, streaming=True)
        request.pop("n", None)
        if isinstance(request.get("seed"), int) and not isinstance(request.get("seed"), bool):
            request["seed"] += index
        options = request.get("stream_options")
        request["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return CandidateStream(index, request["model"], self.stream(request, timeout), timeout)

    async def generate_candidates(
        self, body: Mapping[str, Any], n: int, timeout: float
    ) -> list[Candidate | CandidateError]:
        """N candidates in index order; a failed one is a CandidateError. Raises AllCandidatesFailed if none came."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        request = self._prepare(body)
        request.pop("n", None)
        results: dict[int, Candidate | CandidateError] = {}
        pending = list(range(n))
        for model in (request["model"], *self._fallbacks.get(request["model"], ())):
            provider, upstream = self.resolve(model)
            attempt_body = {**request, "model": upstream}
            if provider.native_n:
                produced = await self._produce(provider, model, attempt_body, pending, timeout)
            else:  # a TaskGroup, so cancelling this call (client gone) cancels every upstream call
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._produce(provider, model, attempt_body, [i], timeout)) for i in pending
                    ]
                produced = [result for task in tasks for result in task.result()]
            results.update((result.index, result) for result in produced)
            pending = [result.index for result in produced if isinstance(result, CandidateError)]
            if not pending:
                break
        candidates = [results[i] for i in range(n)]
        errors = [c for c in candidates if isinstance(c, CandidateError)]
        if len(errors) == n:
            raise AllCandidatesFailed(errors)
        return candidates

    async def _produce(
        self, provider: ChatProvider, model: str, body: dict[str, Any], slots: list[int], timeout: float
    ) -> list[Candidate | CandidateError]:
        """One upstream call (with `n` when it fills several slots) -> one result per slot."""
        started = time.perf_counter()
        try:
            response = await self._with_retries(
                provider, model, {**body, "n": len(slots)} if len(slots) > 1 else body, timeout
            )
        except UpstreamError as err:
            failed_s = time.perf_counter() - started
            return [CandidateError(i, err.code, str(err), err.status, model, err.retry_after, failed_s) for i in slots]
        latency = time.perf_counter() - started
        choices = sorted(response.get("choices") or [], key=lambda choice: int(choice.get("index", 0)))
        usage = response.get("usage")
        return [
            Candidate(slot, {**choices[k], "index": slot}, model, usage, latency)
            if k < len(choices)
            else CandidateError(
                slot, "missing_choice", f"{model}: {len(choices)} of {len(slots)} choices", 502, model, None, latency
            )
            for k, slot in enumerate(slots)
        ]

    async def _with_retries(
        self, provider: ChatProvider, model: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        attempt = 1
        while True:
            try:
                return await provider.complete(body, timeout)
            except UpstreamError as err:
                if not err.retryable or attempt >= self._retry.attempts:
                    raise
                delay = self._delay(err, attempt)
                logger.warning("%s: attempt %d failed (%s); retrying in %.2f s", model, attempt, err, delay)
                await self._sleep(delay)
                attempt += 1

    def _delay(self, err: UpstreamError, attempt: int) -> float:
        wait = parse_retry_after(err.retry_after, self._clock()) if err.retry_after else None
        if wait is not None:
            return min(wait, self._retry.max_retry_after)
        ceiling = min(self._retry.max_delay, self._retry.base_delay * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)
