"""The datasets and feedback API (docs/LIFECYCLE.md): thin handlers over gateway/datasets.py; proxy.create_app mounts
them with its authentication, error path and metrics. Must not import torch, trainer or reward_serving internals.

    POST   /v1/datasets                                 {name, description?} -> 201 dataset; 409 name taken
    GET    /v1/datasets                                 newest first
    GET    /v1/datasets/{dataset}                       id or name
    DELETE /v1/datasets/{dataset}                       {id, deleted: true}, its entries too
    POST   /v1/datasets/{dataset}/entries[?skip_invalid=true]
                                                        JSONL (Content-Type application/x-ndjson) or {"entries": [...]}
                                                        -> {added, invalid: [{index, line, error}], dataset}
    GET    /v1/datasets/{dataset}/entries?limit=&cursor=&split=
    DELETE /v1/datasets/{dataset}/entries/{entry_id}    {id, deleted: true}
    GET    /v1/datasets/{dataset}/export[?split=]       the pairs as JSONL, read from the store in batches
    POST   /v1/datasets/{dataset}/entries/from-logs     {log_ids} or {metadata, model?, since?, before?}
                                                        -> {added, skipped: [{log_id, reason}], dataset}
    POST   /v1/feedback                                 {log_id, choice_index, dataset} or {thread, dataset,
                                                        accepted_log_id?} -> {added, skipped, dataset}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.bodies import read_bytes, read_json
from gateway.config import GatewaySettings
from gateway.datasets import DatasetService, read_entries, read_jsonl
from gateway.errors import InvalidRequestError

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/jsonlines", "text/jsonl")


class DatasetApp(Protocol):
    @property
    def settings(self) -> GatewaySettings: ...

    @property
    def datasets(self) -> DatasetService: ...


async def create_dataset(request: Request, app: DatasetApp) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    _known(body, {"name", "description"})
    dataset = await app.datasets.create(name=body.get("name"), description=body.get("description", ""))
    return JSONResponse(dataset.to_json(), status_code=201)


async def list_datasets(request: Request, app: DatasetApp) -> Response:
    return JSONResponse({"object": "list", "data": [d.to_json() for d in await app.datasets.list_datasets()]})


async def get_dataset(request: Request, app: DatasetApp) -> Response:
    return JSONResponse((await app.datasets.get(request.path_params["dataset"])).to_json())


async def delete_dataset(request: Request, app: DatasetApp) -> Response:
    return JSONResponse({"id": await app.datasets.delete(request.path_params["dataset"]), "deleted": True})


async def add_entries(request: Request, app: DatasetApp) -> Response:
    skip_invalid = _flag(request, "skip_invalid")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() in JSONL_TYPES:
        upload = read_jsonl(await read_bytes(request, app.settings.max_body_bytes))
    else:
        body = await read_json(request, app.settings.max_body_bytes)
        _known(body, {"entries"})
        upload = read_entries(body.get("entries"))
    added = await app.datasets.upload(request.path_params["dataset"], upload, skip_invalid=skip_invalid)
    return JSONResponse(added.upload_json())


async def list_entries(request: Request, app: DatasetApp) -> Response:
    params = request.query_params
    limit = params.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()):  # isdigit() alone admits '²', which int() refuses
        raise InvalidRequestError(f"limit must be a positive integer, got {limit!r}", param="limit")
    page = await app.datasets.entries(
        request.path_params["dataset"], limit=int(limit), cursor=params.get("cursor"), split=params.get("split")
    )
    data = [e.to_json() for e in page.entries]
    has_more = page.next_cursor is not None
    return JSONResponse({"object": "list", "data": data, "next_cursor": page.next_cursor, "has_more": has_more})


async def delete_entry(request: Request, app: DatasetApp) -> Response:
    entry_id = request.path_params["entry_id"]
    await app.datasets.delete_entry(request.path_params["dataset"], entry_id)
    return JSONResponse({"id": entry_id, "deleted": True})


async def export_dataset(request: Request, app: DatasetApp) -> Response:
    split = request.query_params.get("split")
    if split is not None and split not in ("TRAIN", "TEST"):
        raise InvalidRequestError(f"split must be TRAIN or TEST, got {split!r}", param="split")
    dataset = await app.datasets.get(request.path_params["dataset"])  # a 404 before the stream starts
    headers = {"Content-Disposition": f'attachment; filename="{dataset.name}.jsonl"'}
    lines = app.datasets.export(dataset.id, split)
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


async def from_logs(request: Request, app: DatasetApp) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    added = await app.datasets.from_logs(request.path_params["dataset"], body)
    return JSONResponse(added.skipped_json("log_id"))


async def feedback(request: Request, app: DatasetApp) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    added = await app.datasets.feedback(body)
    return JSONResponse(added.skipped_json("choice_index"))


def _known(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise InvalidRequestError(f"unknown field {unknown[0]!r} (allowed: {allowed_list})", param=unknown[0])


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").strip().lower()
    if value not in ("true", "1", "false", "0", ""):
        raise InvalidRequestError(f"{name} must be true or false, got {value!r}", param=name)
    return value in ("true", "1")


Handler = Callable[[Request, Any], Awaitable[Response]]
# (path, handler, method), in matching order: /entries/from-logs before /entries/{entry_id}.
ROUTES: tuple[tuple[str, Handler, str], ...] = (
    ("/v1/datasets", create_dataset, "POST"),
    ("/v1/datasets", list_datasets, "GET"),
    ("/v1/datasets/{dataset}", get_dataset, "GET"),
    ("/v1/datasets/{dataset}", delete_dataset, "DELETE"),
    ("/v1/datasets/{dataset}/entries/from-logs", from_logs, "POST"),
    ("/v1/datasets/{dataset}/entries", add_entries, "POST"),
    ("/v1/datasets/{dataset}/entries", list_entries, "GET"),
    ("/v1/datasets/{dataset}/entries/{entry_id}", delete_entry, "DELETE"),
    ("/v1/datasets/{dataset}/export", export_dataset, "GET"),
    ("/v1/feedback", feedback, "POST"),
)
