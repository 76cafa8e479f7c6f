"""The gateway app: `create_app(open_services)` -> Starlette, the route table behind one middleware (the header
limit, authentication, the one error path, request metrics). No business logic: handlers live in gateway.api.

The app's lifespan owns every long-lived object: it enters `open_services()` (the composition root's wiring in
gateway.cli: store, providers, reward server, criteria, training jobs) and keeps the Services it yields on
`app.state` for the handlers; leaving the lifespan closes them all, in reverse order. Gateway keys guard /v1/* and
OpenPipe's /api/v1/* (Bearer; errors there in OpenPipe's envelope); /health, /metrics, /openapi.json and the
console's files stay open. Must not import torch, trainer or reward_serving internals.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api import Handler, Services, chat, criteria, datasets, jobs, logs, openpipe, ops, ui
from gateway.api.errors import error_reply, openpipe_envelope
from gateway.errors import AuthenticationError, ClientGoneError, HeadersTooLargeError

logger = logging.getLogger(__name__)
MAX_HEADER_BYTES = 16 * 1024  # names + values of all header fields; more is a 431 (nginx's default buffers: 8-32 KB)
ROUTES = (*chat.ROUTES, *criteria.ROUTES, *ui.ROUTES, *datasets.ROUTES, *jobs.ROUTES, *logs.ROUTES, *ops.ROUTES,
          *openpipe.ROUTES)  # fmt: skip
GUARDED = ("/v1/", openpipe.PREFIX + "/")  # the gateway's API and OpenPipe's need a gateway key


def create_app(open_services: Callable[[], AbstractAsyncContextManager[Services]]) -> Starlette:
    """The gateway as an ASGI app; its lifespan opens and closes what `open_services` wires."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services() as services:
            logger.info("gateway settings: %s", services.settings.public())
            app.state.services = services
            yield

    endpoints = [(path, method, _endpoint(path, handler)) for path, handler, method in ROUTES]
    routes = [Route(path, endpoint, methods=[method]) for path, method, endpoint in endpoints]
    direct = {(method, path): endpoint for path, method, endpoint in endpoints if "{" not in path}
    return _Gateway(direct, routes=routes, lifespan=lifespan)


class _Gateway(Starlette):
    """Starlette, with a request for an exact route path (`POST /v1/chat/completions`) handed to its endpoint
    directly, skipping Starlette's middleware stack and router (CPU on every request), since the endpoint already
    does what they would (every error answered, nothing raised past it). Everything else (path parameters, HEAD, 404,
    405, lifespan) goes through Starlette as before."""

    def __init__(self, direct: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        endpoint = self._direct.get((scope["method"], scope["path"])) if http else None
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


def _endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The header limit, authentication, the one error path and request metrics around a handler."""
    guarded = route.startswith(GUARDED)
    openpipe_errors = route.startswith(openpipe.PREFIX + "/")  # OpenPipe's error envelope there

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        services: Services = request.app.state.services
        try:
            # uvicorn's httptools parser takes headers of any size (h11 stops near 1 MB): the limit is ours
            if sum(len(name) + len(value) for name, value in request.scope["headers"]) > MAX_HEADER_BYTES:
                raise HeadersTooLargeError(f"request header fields exceed {MAX_HEADER_BYTES} bytes", param="headers")
            if guarded:
                _authenticate(request, services.settings.api_keys)
            response = await handler(request, services)
        except Exception as exc:  # every error, ours or not, goes through error_reply
            if isinstance(exc, ClientGoneError):  # the client's doing, not a fault here: no traceback, no ERROR
                logger.info("%s %s: %s", request.method, route, exc.message)
            status, body, headers = error_reply(exc)
            body = openpipe_envelope(status, body) if openpipe_errors else body
            response = JSONResponse(body, status_code=status, headers=headers)
        services.metrics.record_request(route, response.status_code, time.perf_counter() - started)
        return response

    return endpoint


def _authenticate(request: Request, keys: tuple[str, ...]) -> None:
    if not keys:
        return
    # the raw ASGI list (names lower-cased by the server), not request.headers: a Headers lookup scans and decodes
    authorization = next((v for k, v in request.scope["headers"] if k == b"authorization"), b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    # Bytes, not str: compare_digest refuses non-ASCII text, and a header may hold any byte (Starlette decodes it as
    # latin-1). Every key is compared: the time taken does not tell which prefix matched.
    given = token.strip().encode("latin-1")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise AuthenticationError("missing or invalid API key: send 'Authorization: Bearer <gateway key>'")
