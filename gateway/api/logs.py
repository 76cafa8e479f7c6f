"""The stored logs: list (newest first, filtered by metadata, model and time, paged by cursor), read one, merge
metadata into one, and export as JSONL (the logs, or their best-vs-worst preference pairs).

    GET   /v1/logs?limit=&cursor=&model=&since=&before=&metadata.KEY=VALUE
    GET   /v1/logs/export                 the matching logs as JSONL, read from the store a page at a time
    GET   /v1/logs/export/pairs           the matching logs as seed-format preference pairs
    GET   /v1/logs/{id}
    PATCH /v1/logs/{id}/metadata          {"metadata": {key: string | null}}  (null removes the key)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.api import Route, Services
from gateway.api.bodies import log_query, page_limit, read_json
from gateway.errors import InvalidRequestError
from gateway.protocol import Log, render


async def list_logs(request: Request, services: Services) -> Response:
    cursor = request.query_params.get("cursor")
    page = await services.store.list_logs(log_query(request), limit=page_limit(request), cursor=cursor)
    body = {
        "object": "list",
        "data": [render(Log, log) for log in page.logs],
        "next_cursor": page.next_cursor,
        "has_more": page.next_cursor is not None,
    }
    return JSONResponse(body)


async def get_log(request: Request, services: Services) -> Response:
    return JSONResponse(render(Log, await services.store.get_log(request.path_params["id"])))


async def patch_metadata(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    patch = body.get("metadata")
    if not isinstance(patch, dict):
        raise InvalidRequestError('expected {"metadata": {key: string | null}}', param="metadata")
    return JSONResponse(render(Log, await services.store.update_metadata(request.path_params["id"], patch)))


async def export_logs(request: Request, services: Services) -> Response:
    return StreamingResponse(services.store.export_jsonl(log_query(request)), media_type="application/x-ndjson")


async def export_pairs(request: Request, services: Services) -> Response:
    return StreamingResponse(services.store.export_pairs(log_query(request)), media_type="application/x-ndjson")


ROUTES: tuple[Route, ...] = (
    ("/v1/logs", list_logs, "GET"),
    ("/v1/logs/export", export_logs, "GET"),
    ("/v1/logs/export/pairs", export_pairs, "GET"),
    ("/v1/logs/{id}", get_log, "GET"),
    ("/v1/logs/{id}/metadata", patch_metadata, "PATCH"),
)
