"""POST /v1/chat/completions and GET /v1/models.

The handler reads every wire input once, into a frozen ChatRequest: the body (the OpenAI fields the gateway
reads; everything else passes through), `op-criteria` (typed criterion references), `op-best-only`, `store` and
`metadata`, and n's range with criteria. Then it calls the chat service once and renders the result as JSON or
as an event stream. The overhead metric (arrival to rendered body, minus the waits on the upstream and the
criteria) is recorded here, where the body is rendered; the service records what it waits on.

Headers: `op-criteria` (a JSON array of criterion ids) turns on best-of-N; `op-best-only: true` returns only the
best choice (all candidates are still scored and, with store: true, stored).

A client that leaves cancels its work: the service call runs under `until_disconnected`, so the upstream calls
(their connections closed, so providers stop generating) and the scoring stop when the client goes, and the
request counts as a 499. Nothing is stored for it: no answer was given (a cancellation that lands while the log
is being written may still leave that complete log). Streams do the same through Starlette's StreamingResponse,
which closes the relay, and so the upstream, when the client goes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.api import Route, Services, sse
from gateway.api.bodies import header_flag, invalid_body, read_json, until_disconnected, utf8_header
from gateway.config import GatewaySettings
from gateway.criteria import parse_criteria_header
from gateway.errors import InvalidRequestError
from gateway.formats import loose_message
from gateway.protocol import ChatCompletionRequest, ModelEntry, ModelListing, upstream_body
from gateway.service import render
from gateway.service.handoffs import BestOfN, ChatRequest
from gateway.store import validate_metadata


def parse_chat(
    raw: dict[str, Any], headers: Mapping[str, str], settings: GatewaySettings, started: float
) -> ChatRequest:
    """Every check a client can fail, in one place and before any upstream call: a 400 naming the field."""
    try:
        body = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    best_only = header_flag(headers.get("op-best-only"), "op-best-only")
    best_of_n = None
    criteria = headers.get("op-criteria")
    if criteria is not None:
        refs = parse_criteria_header(utf8_header(criteria, "op-criteria"))
        n = 1 if body.n is None else body.n
        if not 1 <= n <= settings.max_n:
            raise InvalidRequestError(f"n must be between 1 and {settings.max_n} with op-criteria, got {n}", param="n")
        prompt = tuple(loose_message(m, f"messages[{i}]") for i, m in enumerate(raw["messages"]))
        best_of_n = BestOfN(tuple(refs), n, best_only, prompt)
    metadata = validate_metadata(body.metadata or {})
    options = raw.get("stream_options")
    return ChatRequest(
        model=body.model,
        raw=raw,
        upstream=upstream_body(raw),
        stream=bool(body.stream),
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        metadata=metadata if body.store else None,
        started=started,
        best_of_n=best_of_n,
    )


async def chat_completions(request: Request, services: Services) -> Response:
    started = time.perf_counter()
    raw = await read_json(request, services.settings)
    chat = parse_chat(raw, request.headers, services.settings, started)
    if chat.best_of_n is None:
        if chat.stream:  # its overhead is not measured: the body streams later
            return StreamingResponse(sse.relay(await services.chat.stream(chat)), media_type="text/event-stream")
        passed = await until_disconnected(request, services.chat.passthrough(chat))
        response: Response = JSONResponse(render.passthrough_completion(passed))
        waited, mode = passed.upstream_s, "passthrough"
    else:
        ranked = await until_disconnected(request, services.chat.best_of_n(chat))
        completion = render.chat_completion(ranked)
        if chat.stream:  # every event is ready at once: one body holds them all (still a valid event stream)
            body = sse.events(render.completion_chunks(completion, include_usage=chat.include_usage))
            response = Response(body, media_type="text/event-stream")
        else:
            response = JSONResponse(completion)
        waited, mode = ranked.waited_s, "best_of_n"
    services.metrics.record_overhead(mode, time.perf_counter() - started - waited)
    return response


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
