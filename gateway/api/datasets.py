"""The datasets and feedback API (docs/LIFECYCLE.md): thin handlers over gateway.service.datasets and
gateway.service.feedback; gateway.proxy mounts them behind its middleware. Must not import torch, trainer or
reward_serving internals.

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
                                                        accepted_log_id?} -> {added, skipped, dataset}; with
                                                        `rating` (a number): that choice as a rated response
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.api import Route, Services
from gateway.api.bodies import known_fields, page_limit, query_flag, read_bytes, read_json
from gateway.errors import InvalidRequestError
from gateway.protocol import AddedPairs, Dataset, Deleted, Entry, EntryError, Uploaded, render
from gateway.service.datasets import Added, read_entries, read_jsonl

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/jsonlines", "text/jsonl")


async def create_dataset(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    known_fields(body, {"name", "description"})
    dataset = await services.datasets.create(name=body.get("name"), description=body.get("description", ""))
    return JSONResponse(render(Dataset, dataset), status_code=201)


async def list_datasets(request: Request, services: Services) -> Response:
    data = [render(Dataset, d) for d in await services.datasets.list_datasets()]
    return JSONResponse({"object": "list", "data": data})


async def get_dataset(request: Request, services: Services) -> Response:
    return JSONResponse(render(Dataset, await services.datasets.get(request.path_params["dataset"])))


async def delete_dataset(request: Request, services: Services) -> Response:
    deleted = await services.datasets.delete(request.path_params["dataset"])
    return JSONResponse(Deleted(id=deleted).model_dump())


async def add_entries(request: Request, services: Services) -> Response:
    skip_invalid = query_flag(request, "skip_invalid")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() in JSONL_TYPES:
        upload = read_jsonl(await read_bytes(request, services.settings))
    else:
        body = await read_json(request, services.settings)
        known_fields(body, {"entries"})
        upload = read_entries(body.get("entries"))
    added = await services.datasets.upload(request.path_params["dataset"], upload, skip_invalid=skip_invalid)
    invalid = [EntryError.model_validate(e) for e in added.invalid]
    uploaded = Uploaded(added=added.added, invalid=invalid, dataset=_dataset(added))
    return JSONResponse(uploaded.model_dump(mode="json"))


async def list_entries(request: Request, services: Services) -> Response:
    params = request.query_params
    page = await services.datasets.entries(
        request.path_params["dataset"],
        limit=page_limit(request),
        cursor=params.get("cursor"),
        split=params.get("split"),
    )
    data = [render(Entry, e) for e in page.entries]
    has_more = page.next_cursor is not None
    return JSONResponse({"object": "list", "data": data, "next_cursor": page.next_cursor, "has_more": has_more})


async def delete_entry(request: Request, services: Services) -> Response:
    entry_id = request.path_params["entry_id"]
    await services.datasets.delete_entry(request.path_params["dataset"], entry_id)
    return JSONResponse(Deleted(id=entry_id).model_dump())


async def export_dataset(request: Request, services: Services) -> Response:
    split = request.query_params.get("split")
    if split is not None and split not in ("TRAIN", "TEST"):
        raise InvalidRequestError(f"split must be TRAIN or TEST, got {split!r}", param="split")
    dataset = await services.datasets.get(request.path_params["dataset"])  # a 404 before the stream starts
    headers = {"Content-Disposition": f'attachment; filename="{dataset.name}.jsonl"'}
    lines = services.datasets.export(dataset.id, split)
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


async def from_logs(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    added = await services.datasets.from_logs(request.path_params["dataset"], body)
    return JSONResponse(_added(added, "log_id"))


async def feedback(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    added = await services.feedback.add(body)
    return JSONResponse(_added(added, "choice_index"))


def _dataset(added: Added) -> Dataset:
    return Dataset.model_validate(added.dataset)


def _added(added: Added, key: str) -> dict[str, Any]:
    """What from-logs and feedback added; each skipped log or choice under `key`, with the reason."""
    skipped = [{key: ref, "reason": reason} for ref, reason in added.skipped]
    return AddedPairs(added=added.added, skipped=skipped, dataset=_dataset(added)).model_dump(mode="json")


# In matching order: /entries/from-logs before /entries/{entry_id}.
ROUTES: tuple[Route, ...] = (
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
