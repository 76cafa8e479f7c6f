"""What operators and tools read, with no key: liveness, the Prometheus exposition and the OpenAPI document.

GET /health        {"status": "ok", "pid": <the worker process that answered>}
GET /metrics       every gateway metric (gateway.metrics)
GET /openapi.json  this API's OpenAPI 3.1 document (gateway.api.openapi)
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api import Route, Services
from gateway.api.openapi import spec_bytes
from gateway.protocol import Health


async def health(request: Request, services: Services) -> Response:
    return JSONResponse(Health(pid=os.getpid()).model_dump())


async def metrics(request: Request, services: Services) -> Response:
    payload, content_type = services.metrics.exposition()
    return Response(payload, media_type=content_type)


async def openapi(request: Request, services: Services) -> Response:
    return Response(spec_bytes(), media_type="application/json")


ROUTES: tuple[Route, ...] = (
    ("/health", health, "GET"),
    ("/metrics", metrics, "GET"),
    ("/openapi.json", openapi, "GET"),
)
