"""POST /v1/chat/completions and GET /v1/models.

The handler reads every wire input once, into a frozen ChatRequest: the body (the OpenAI fields the gateway
reads; everything else passes through), `op-criteria` (typed criterion references), `op-best-only`, `store` and
`metadata`, and n's range with criteria. Then it calls the chat service once and renders the result as JSON or
as an event stream. The overhead metric (arrival to rendered body, minus the waits on the upstream and the
criteria) is recorded here, where the body is rendered; the service records what it waits on.

Headers: `op-criteria` (a JSON array of criterion ids) turns on best-of-N; `op-best-only: true` returns only the
best choice (all candidates are still scored and, with store: true, stored). OpenPipe's headers work here too:
`op-log-request: true|false` (store; it wins over the body's `store`), `op-tags` (a JSON object merged under the
body's `metadata`, which wins on a shared key; numbers and booleans become strings, null drops the key; then OpenAI's
metadata rules), `op-cache` (readWrite | readOnly | writeOnly | false; `true`, from older SDKs, means readWrite): the
response cache (gateway.service.cache), for every request but a streamed pass-through, which is relayed as it comes.
`op-bon` (with op-criteria only) picks a budgeted best-of-N strategy, a JSON object: `{"strategy": "early_rejection",
"checkpoints": [16, 32, 64], "keep": 0.5, "min_keep": 1}`, `{"strategy": "adaptive", "per_round": 2, "threshold":
0.7, "max_tokens": 4000, "max_latency_s": 30}` or `{"strategy": "best_of_n"}` (the default); every key but
`strategy` is optional (early rejection with neither `checkpoints` nor `keep` runs the setting calibrated for the
request's reward model), and a bad value is a 400 naming `op-bon.<field>` (gateway.service.budget runs them).

A client that leaves cancels its work: the service call runs under `until_disconnected`, so the upstream calls
(their connections closed, so providers stop generating) and the scoring stop when the client goes, and the
request counts as a 499. Nothing is stored for it: no answer was given (a cancellation that lands while the log
is being written may still leave that complete log). Streams do the same through Starlette's StreamingResponse,
which closes the relay, and so the upstream, when the client goes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.api import Route, Services, sse
from gateway.api.bodies import header_flag, invalid_body, read_json, tag_values, until_disconnected, utf8_header
from gateway.config import GatewaySettings
from gateway.criteria import parse_criteria_header
from gateway.errors import InvalidRequestError
from gateway.formats import loose_message
from gateway.protocol import ChatCompletionRequest, ModelEntry, ModelListing, upstream_body
from gateway.service import render
from gateway.service.handoffs import (
    NO_CACHE,
    AdaptiveN,
    BestOfN,
    BudgetPolicy,
    CachePolicy,
    ChatRequest,
    EarlyRejection,
)
from gateway.store import validate_metadata

# OpenPipe's op-cache values, matched without case
CACHE_POLICIES = {
    "readwrite": CachePolicy(read=True, write=True),
    "true": CachePolicy(read=True, write=True),
    "readonly": CachePolicy(read=True),
    "writeonly": CachePolicy(write=True),
    "false": NO_CACHE,
}


def parse_chat(
    raw: dict[str, Any],
    headers: Mapping[str, str],
    settings: GatewaySettings,
    started: float,
    *,
    log_by_default: bool = False,
) -> ChatRequest:
    """Every check a client can fail, in one place and before any upstream call: a 400 naming the field.
    `log_by_default`: whether a request that says nothing (no op-log-request, no store) is stored."""
    try:
        body = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    best_only = header_flag(headers.get("op-best-only"), "op-best-only")
    best_of_n = None
    criteria = headers.get("op-criteria")
    bon = headers.get("op-bon")
    if bon is not None and criteria is None:
        raise InvalidRequestError("op-bon: a budgeted best-of-N needs op-criteria to score with", param="op-bon")
    if criteria is not None:
        refs = parse_criteria_header(utf8_header(criteria, "op-criteria"))
        n = 1 if body.n is None else body.n
        if not 1 <= n <= settings.max_n:
            raise InvalidRequestError(f"n must be between 1 and {settings.max_n} with op-criteria, got {n}", param="n")
        prompt = tuple(loose_message(m, f"messages[{i}]") for i, m in enumerate(raw["messages"]))
        budget = None if bon is None else _budget_policy(utf8_header(bon, "op-bon"), settings.max_n)
        best_of_n = BestOfN(tuple(refs), n, best_only, prompt, budget)
    tags = {k: v for k, v in _tags(headers.get("op-tags")).items() if v is not None}
    metadata = validate_metadata({**tags, **(body.metadata or {})})
    logged = headers.get("op-log-request")
    store = header_flag(logged, "op-log-request") if logged is not None else body.store
    options = raw.get("stream_options")
    return ChatRequest(
        model=body.model,
        raw=raw,
        upstream=upstream_body(raw),
        stream=bool(body.stream),
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        metadata=metadata if (log_by_default if store is None else store) else None,
        started=started,
        best_of_n=best_of_n,
        cache=_cache_policy(headers.get("op-cache")),
    )


def _tags(value: str | None) -> dict[str, str | None]:
    if value is None:
        return {}
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("op-tags: not valid JSON; expected an object such as {\"prompt_id\": \"a\"}",
                                  param="op-tags") from None  # fmt: skip
    return tag_values(raw, "op-tags")


_BON_KEYS = {
    "best_of_n": {"strategy"},
    "early_rejection": {"strategy", "checkpoints", "keep", "min_keep"},
    "adaptive": {"strategy", "per_round", "threshold", "max_tokens", "max_latency_s"},
}
MAX_CHECKPOINTS = 8


def _budget_policy(value: str, max_n: int) -> BudgetPolicy | None:
    """`op-bon` as a typed strategy (None: plain best-of-N); a 400 naming `op-bon.<field>` for a bad value."""

    def bad(field: str, problem: str) -> InvalidRequestError:
        where = "op-bon" if not field else f"op-bon.{field}"
        return InvalidRequestError(f"{where}: {problem}", param=where)

    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise bad("", 'not valid JSON; expected an object such as {"strategy": "early_rejection"}') from None
    if not isinstance(raw, dict):
        raise bad("", 'must be a JSON object such as {"strategy": "early_rejection"}')
    strategy = raw.get("strategy")
    if strategy not in _BON_KEYS:
        raise bad("strategy", f"expected one of {sorted(_BON_KEYS)}, got {strategy!r}")
    unknown = sorted(set(raw) - _BON_KEYS[strategy])
    if unknown:
        raise bad(unknown[0], f"not a field of the {strategy} strategy (fields: {sorted(_BON_KEYS[strategy])})")

    def integer(field: str, low: int, high: int) -> int | None:
        got = raw.get(field)
        if got is not None and (isinstance(got, bool) or not isinstance(got, int) or not low <= got <= high):
            raise bad(field, f"must be an integer from {low} to {high}, got {got!r}")
        return got

    def number(field: str, low: float, high: float, *, above: bool = False) -> float | None:
        got = raw.get(field)
        if got is None:
            return None
        fits = isinstance(got, int | float) and not isinstance(got, bool) and (low < got if above else low <= got)
        if not fits or got > high:
            raise bad(field, f"must be a number {'above' if above else 'from'} {low:g} to {high:g}, got {got!r}")
        return float(got)

    if strategy == "early_rejection":
        checkpoints = raw.get("checkpoints")
        if checkpoints is not None and (
            not isinstance(checkpoints, list)
            or not 1 <= len(checkpoints) <= MAX_CHECKPOINTS
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in checkpoints)
            or any(a >= b for a, b in itertools.pairwise(checkpoints))
        ):
            problem = f"must be 1 to {MAX_CHECKPOINTS} increasing token counts >= 1, got {checkpoints!r}"
            raise bad("checkpoints", problem)
        keep = number("keep", 0.0, 1.0, above=True)
        min_keep = integer("min_keep", 1, max_n)
        return EarlyRejection(
            None if checkpoints is None else tuple(checkpoints),
            keep,
            EarlyRejection.min_keep if min_keep is None else min_keep,
        )
    if strategy == "adaptive":
        per_round = integer("per_round", 1, max_n)
        threshold = number("threshold", 0.0, 1.0)
        return AdaptiveN(
            AdaptiveN.per_round if per_round is None else per_round,
            AdaptiveN.threshold if threshold is None else threshold,
            integer("max_tokens", 1, 10**9),
            number("max_latency_s", 0.0, 86400.0, above=True),
        )
    return None


def _cache_policy(value: str | None) -> CachePolicy:
    if value is None:
        return NO_CACHE
    policy = CACHE_POLICIES.get(value.strip().lower())
    if policy is None:
        raise InvalidRequestError(
            f"op-cache: expected readWrite, readOnly, writeOnly or false, got {value!r}", param="op-cache"
        )
    return policy


async def chat_completions(request: Request, services: Services, *, log_by_default: bool = False) -> Response:
    started = time.perf_counter()
    raw = await read_json(request, services.settings)
    # one pass over the raw headers (the first of a repeated name wins, as with Headers.get) for parse_chat's lookups
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(request.scope["headers"])}
    chat = parse_chat(raw, headers, services.settings, started, log_by_default=log_by_default)
    if chat.best_of_n is None:
        if chat.stream:  # its overhead is not measured: the body streams later
            return StreamingResponse(sse.relay(await services.chat.stream(chat)), media_type="text/event-stream")
        passed = await until_disconnected(request, services.chat.passthrough(chat))
        response: Response = _json(render.passthrough_completion(passed))
        waited, mode = passed.upstream_s, "passthrough"
    else:
        ranked = await until_disconnected(request, services.chat.best_of_n(chat))
        completion = render.chat_completion(ranked)
        if chat.stream:  # every event is ready at once: one body holds them all (still a valid event stream)
            body = sse.events(render.completion_chunks(completion, include_usage=chat.include_usage))
            response = Response(body, media_type="text/event-stream")
        else:
            response = _json(completion)
        waited, mode = ranked.waited_s, "best_of_n"
    services.metrics.record_overhead(mode, time.perf_counter() - started - waited)
    return response


def _json(content: Mapping[str, Any]) -> Response:
    """A JSON body written by orjson: about 3x cheaper than starlette's JSONResponse (stdlib json) on a ranked
    completion, which bench/profile_gateway.py showed on the request path (the same compact JSON)."""
    return Response(orjson.dumps(content), media_type="application/json")


async def list_models(request: Request, services: Services) -> Response:
    """The configured upstream models, then every reward model version the reward server serves."""
    data = [
        ModelEntry(id=m, owned_by=m.partition(":")[0] if ":" in m else "upstream")
        for m in services.settings.upstream_models
    ]
    for card in await services.criteria.reward_models():
        info = {"kind": "reward_model", "slug": card.slug, "version": card.version, "latest": card.latest}
        data.append(ModelEntry(id=card.id, owned_by="rewardgate", rewardgate=info))
    return JSONResponse(ModelListing(data=data).model_dump(exclude_none=True))


ROUTES: tuple[Route, ...] = (
    ("/v1/chat/completions", chat_completions, "POST"),
    ("/v1/models", list_models, "GET"),
)
