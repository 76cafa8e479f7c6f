"""The gateway app: create_app(settings, ...) -> Starlette, with thin routes and no scoring logic (DESIGN contract 4).

Owns routing, authentication (gateway Bearer keys on /v1/*; /health and /metrics stay open), the body-size limit,
request metrics and the one error path (gateway.errors.error_reply). The chat service is gateway/bestofn.py.
The lifespan starts and closes the router's providers and enters the caller's `lifespan` (the composition root
passes the embedded reward server's). Must not import torch, trainer or reward_serving internals.

Headers: `op-criteria` (JSON array of criterion ids) turns on best-of-N; `op-best-only: true` returns only the
best choice (all candidates are still scored and, with store: true, stored).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.bestofn import ChatContext, ChatService
from gateway.bodies import read_json
from gateway.config import GatewaySettings
from gateway.criteria import CriterionUnavailableError, JudgeModel, RewardModelCatalog
from gateway.criteria_routes import ROUTES as CRITERIA_ROUTES
from gateway.criteria_service import CriteriaService, load_criteria_file, router_judge
from gateway.dataset_routes import ROUTES as DATASET_ROUTES
from gateway.datasets import DatasetService
from gateway.errors import AuthenticationError, HeadersTooLargeError, InvalidRequestError, error_reply
from gateway.job_routes import ROUTES as JOB_ROUTES
from gateway.jobs import JobService
from gateway.metrics import GatewayMetrics
from gateway.openapi import openapi_json
from gateway.protocol import ChatCompletionRequest, ModelEntry, ModelListing
from gateway.router import Router
from gateway.sse import completion_events
from gateway.store import LogQuery, LogStore
from gateway.ui_routes import ROUTES as UI_ROUTES

logger = logging.getLogger(__name__)
Handler = Callable[[Request, "_App"], Awaitable[Response]]
MAX_HEADER_BYTES = 16 * 1024  # names + values of all header fields; more is a 431 (nginx's default buffers: 8-32 KB)


@dataclass(frozen=True)
class _App:
    """What the handlers share: settings, the services, the store, the catalog and the metrics."""

    settings: GatewaySettings
    service: ChatService
    criteria: CriteriaService
    store: LogStore
    catalog: RewardModelCatalog
    metrics: GatewayMetrics
    datasets: DatasetService
    jobs: JobService


def create_app(
    settings: GatewaySettings,
    *,
    router: Router,
    store: LogStore,
    criteria_client: httpx.AsyncClient,
    metrics: GatewayMetrics | None = None,
    lifespan: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    judge: JudgeModel | None = None,
) -> Starlette:
    """The gateway as an ASGI app. `criteria_client` talks to the reward server (over the network, or in-process
    through httpx.ASGITransport); the caller owns it and the store, the app's lifespan owns the router. LLM-judge
    criteria call `judge` (default: the router itself). The lifespan syncs `settings.criteria_file`."""
    metrics = metrics or GatewayMetrics()
    catalog = RewardModelCatalog(
        criteria_client,
        timeout_s=min(5.0, settings.criteria_timeout_s),  # the listing, bounded like the scoring
        score_timeout_s=settings.criteria_timeout_s,
    )
    criteria = CriteriaService(store=store, catalog=catalog, judge=judge or router_judge(router))
    service = ChatService(settings, router=router, store=store, criteria=criteria, metrics=metrics)
    datasets = DatasetService(store)
    jobs = JobService(settings, store=store, datasets=datasets, metrics=metrics)
    app = _App(settings, service, criteria, store, catalog, metrics, datasets, jobs)

    @asynccontextmanager
    async def app_lifespan(_: Starlette) -> AsyncIterator[None]:
        logger.info("gateway settings: %s", settings.public())
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(router)
            if lifespan is not None:
                await stack.enter_async_context(lifespan())
            if settings.criteria_file:  # once the reward server is up: a slug may not shadow a reward model's
                added = await criteria.sync(load_criteria_file(settings.criteria_file))
                logger.info("criteria file %s: %d new version(s)", settings.criteria_file, len(added))
            await stack.enter_async_context(jobs)  # resumes interrupted training jobs; stops trainers at shutdown
            yield

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, _endpoint(app, path, handler), methods=[method])

    routes = [
        route("/v1/chat/completions", _chat, "POST"),
        route("/v1/models", _models, "GET"),
        *(route(path, handler, method) for path, handler, method in CRITERIA_ROUTES),
        *(route(path, handler, method) for path, handler, method in UI_ROUTES),
        *(route(path, handler, method) for path, handler, method in DATASET_ROUTES),
        *(route(path, handler, method) for path, handler, method in JOB_ROUTES),
        route("/v1/logs", _list_logs, "GET"),
        route("/v1/logs/export", _export_logs, "GET"),
        route("/v1/logs/export/pairs", _export_pairs, "GET"),
        route("/v1/logs/{id}", _get_log, "GET"),
        route("/v1/logs/{id}/metadata", _patch_metadata, "PATCH"),
        route("/health", _health, "GET"),
        route("/metrics", _metrics, "GET"),
        route("/openapi.json", openapi_json, "GET"),
    ]
    return Starlette(routes=routes, lifespan=app_lifespan)


# ---------------------------------------------------------------- handlers


async def _chat(request: Request, app: _App) -> Response:
    started = time.perf_counter()
    raw = await read_json(request, app.settings.max_body_bytes)
    try:
        parsed = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise InvalidRequestError(f"{where}: {error['msg']}", param=where) from None
    ctx = ChatContext(
        request=parsed,
        raw=raw,
        criteria_header=request.headers.get("op-criteria"),
        best_only=_flag(request.headers.get("op-best-only"), "op-best-only"),
        started=started,
    )
    if parsed.stream and ctx.criteria_header is None:  # its overhead is not measured: the body streams later
        return StreamingResponse(await app.service.stream(ctx), media_type="text/event-stream")
    response: Response
    if ctx.criteria_header is None:
        response = JSONResponse(await app.service.passthrough(ctx))
    elif not parsed.stream:
        response = JSONResponse(await app.service.best_of_n(ctx))
    else:
        completion = await app.service.best_of_n(ctx)
        include_usage = isinstance(raw.get("stream_options"), dict) and raw["stream_options"].get("include_usage")
        # Every event is ready at once: one body holds them all (still a valid event stream).
        events = completion_events(completion, include_usage=include_usage is True)
        response = Response(b"".join(events), media_type="text/event-stream")
    # Overhead: arrival to rendered body, minus the waits on the upstream and the criteria.
    overhead = time.perf_counter() - started - ctx.waited.upstream_s - ctx.waited.scoring_s
    app.metrics.record_overhead("passthrough" if ctx.criteria_header is None else "best_of_n", overhead)
    return response


async def _models(request: Request, app: _App) -> Response:
    data = [
        ModelEntry(id=m, owned_by=m.partition(":")[0] if ":" in m else "upstream") for m in app.settings.upstream_models
    ]
    try:
        cards = await app.catalog.models()
    except CriterionUnavailableError as exc:  # the listing still shows the upstream models
        logger.warning("reward models not listed: %s", exc.message)
        cards = []
    for card in cards:
        info = {"kind": "reward_model", "slug": card.slug, "version": card.version, "latest": card.latest}
        data.append(ModelEntry(id=card.id, owned_by="rewardgate", rewardgate=info))
    return JSONResponse(ModelListing(data=data).model_dump(exclude_none=True))


async def _list_logs(request: Request, app: _App) -> Response:
    limit = request.query_params.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()):  # isdigit() alone admits '²', which int() refuses
        raise InvalidRequestError(f"limit must be a positive integer, got {limit!r}", param="limit")
    page = await app.store.list_logs(_query(request), limit=int(limit), cursor=request.query_params.get("cursor"))
    body = {
        "object": "list",
        "data": [log.to_json() for log in page.logs],
        "next_cursor": page.next_cursor,
        "has_more": page.next_cursor is not None,
    }
    return JSONResponse(body)


async def _get_log(request: Request, app: _App) -> Response:
    return JSONResponse((await app.store.get_log(request.path_params["id"])).to_json())


async def _patch_metadata(request: Request, app: _App) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    patch = body.get("metadata")
    if not isinstance(patch, dict):
        raise InvalidRequestError('expected {"metadata": {key: string | null}}', param="metadata")
    return JSONResponse((await app.store.update_metadata(request.path_params["id"], patch)).to_json())


async def _export_logs(request: Request, app: _App) -> Response:
    return StreamingResponse(app.store.export_jsonl(_query(request)), media_type="application/x-ndjson")


async def _export_pairs(request: Request, app: _App) -> Response:
    return StreamingResponse(app.store.export_pairs(_query(request)), media_type="application/x-ndjson")


async def _health(request: Request, app: _App) -> Response:
    return JSONResponse({"status": "ok"})


async def _metrics(request: Request, app: _App) -> Response:
    payload, content_type = app.metrics.exposition()
    return Response(payload, media_type=content_type)


# ---------------------------------------------------------------- plumbing


def _endpoint(app: _App, route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authentication, the one error path and request metrics around a handler."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            # uvicorn's httptools parser takes headers of any size (h11 stops near 1 MB): the limit is ours
            if sum(len(name) + len(value) for name, value in request.scope["headers"]) > MAX_HEADER_BYTES:
                raise HeadersTooLargeError(f"request header fields exceed {MAX_HEADER_BYTES} bytes", param="headers")
            if route.startswith("/v1/"):
                _authenticate(request, app.settings.api_keys)
            response = await handler(request, app)
        except Exception as exc:  # every error, ours or not, goes through error_reply
            status, body, headers = error_reply(exc)
            response = JSONResponse(body, status_code=status, headers=headers)
        app.metrics.record_request(route, response.status_code, time.perf_counter() - started)
        return response

    return endpoint


def _authenticate(request: Request, keys: tuple[str, ...]) -> None:
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest against every key: the time taken does not tell which prefix matched
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), key) for key in keys):
        raise AuthenticationError("missing or invalid API key: send 'Authorization: Bearer <gateway key>'")


def _flag(value: str | None, name: str) -> bool:
    """A true/false header (case and surrounding space ignored); absent is false, anything else a 400."""
    if value is None:
        return False
    word = value.strip().lower()
    if word not in ("true", "false"):
        raise InvalidRequestError(f"{name}: expected 'true' or 'false', got {value!r}", param=name)
    return word == "true"


def _query(request: Request) -> LogQuery:
    """metadata.KEY=VALUE, model, since, before (ISO 8601 with a timezone) from the query string."""
    params = request.query_params
    metadata = {k.removeprefix("metadata."): v for k, v in params.items() if k.startswith("metadata.")}
    times: dict[str, datetime | None] = {}
    for name in ("since", "before"):
        value = params.get(name)
        try:
            times[name] = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
        except ValueError:
            raise InvalidRequestError(f"{name}: not an ISO 8601 datetime: {value!r}", param=name) from None
    return LogQuery(metadata=metadata, model=params.get("model"), since=times["since"], before=times["before"])
