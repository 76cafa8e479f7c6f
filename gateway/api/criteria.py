"""The criteria API: definitions (create, list, read, new version), alignment against a labelled set, and
OpenPipe's offline judge. Thin handlers over gateway.service.criteria; gateway.proxy mounts them behind its
middleware. Must not import torch, trainer or reward_serving internals.

    POST /v1/criteria                   {slug, kind: "rule" | "llm_judge", spec, description?}  -> 201, v1
    GET  /v1/criteria                   every version of every definition
    GET  /v1/criteria/{id}              `slug` (newest) or `slug@vN`
    POST /v1/criteria/{slug}/versions   {spec, description?}  -> 201, the next version (same kind)
    POST /v1/criteria/{id}/alignment    {"rows": [labelled rows], "threshold"?: 0.5} or a JSONL body
                                        (Content-Type application/x-ndjson) -> the report, stored with the version
    POST /v1/criteria/judge             {criterion_id, criterion_version?, input?: {messages}, output}
                                        -> {score, normalized, explanation, criterion, usage}; any kind, reward
                                        models included. A criterion that fails answers 502 with its errorCode.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api import Route, Services
from gateway.api.bodies import known_fields, read_bytes, read_json
from gateway.criteria import Criterion, CriterionResult
from gateway.criteria.alignment import LabelledRow, LabelledSetError, parse_labelled_row, parse_labelled_set
from gateway.errors import CriterionFailedError, InvalidRequestError
from gateway.formats import PairError, parse_message


async def create_criterion(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    known_fields(body, {"slug", "kind", "spec", "description"})
    definition = await services.criteria.create(
        slug=body.get("slug"), kind=body.get("kind"), spec=body.get("spec"), description=body.get("description", "")
    )
    return JSONResponse(definition.model_dump(mode="json"), status_code=201)


async def add_version(request: Request, services: Services) -> Response:
    body = await read_json(request, services.settings)
    known_fields(body, {"spec", "description"})
    current = await services.criteria.get(request.path_params["slug"])
    definition = await services.criteria.create(
        slug=current.slug,
        kind=current.kind,
        spec=body.get("spec"),
        description=body.get("description", current.description),
        new_version=True,
    )
    return JSONResponse(definition.model_dump(mode="json"), status_code=201)


async def list_criteria(request: Request, services: Services) -> Response:
    data = [d.model_dump(mode="json") for d in await services.criteria.list_definitions()]
    return JSONResponse({"object": "list", "data": data})


async def get_criterion(request: Request, services: Services) -> Response:
    return JSONResponse((await services.criteria.get(request.path_params["id"])).model_dump(mode="json"))


async def align(request: Request, services: Services) -> Response:
    threshold: object = 0.5
    try:
        if request.headers.get("content-type", "").startswith("application/x-ndjson"):
            rows = parse_labelled_set((await read_bytes(request, services.settings)).splitlines())
        else:
            body = await read_json(request, services.settings)
            known_fields(body, {"rows", "threshold"})
            threshold = body.get("threshold", 0.5)
            rows = _rows(body.get("rows"))
    except LabelledSetError as exc:
        report = "; ".join(str(e) for e in exc.errors[:20])
        raise InvalidRequestError(f"{len(exc.errors)} invalid labelled row(s): {report}", param="rows") from None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise InvalidRequestError(f"threshold: expected a number in 0..1, got {threshold!r}", param="threshold")
    return JSONResponse(await services.criteria.align(request.path_params["id"], rows, threshold=float(threshold)))


async def judge(request: Request, services: Services) -> Response:
    criterion, result = await run_judge(await read_json(request, services.settings), services)
    prompt_tokens = int((result.usage or {}).get("prompt_tokens", 0))
    completion_tokens = int((result.usage or {}).get("completion_tokens", 0))
    return JSONResponse(
        {
            "score": result.score,
            "normalized": result.normalized,
            "explanation": result.explanation,
            "criterion": {"slug": criterion.slug, "version": criterion.version, "kind": criterion.kind},
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


async def run_judge(body: dict[str, Any], services: Services) -> tuple[Criterion, CriterionResult]:
    """OpenPipe's judge body, checked, judged; a criterion that cannot judge raises CriterionFailedError (502).
    Shared with the /api/v1 mount, which renders the answer in OpenPipe's shape."""
    known_fields(body, {"criterion_id", "criterion_version", "input", "output"})
    criterion_id = body.get("criterion_id")
    version = body.get("criterion_version")
    if not isinstance(criterion_id, str):
        raise InvalidRequestError("criterion_id: required, a string ('slug' or 'slug@vN')", param="criterion_id")
    if version is not None:
        if "@" in criterion_id or not isinstance(version, str | int) or isinstance(version, bool):
            raise InvalidRequestError(
                "criterion_version: 'vN' or N, with an unversioned criterion_id", param="criterion_version"
            )
        criterion_id = f"{criterion_id}@v{str(version).removeprefix('v')}"
    raw_input = body.get("input") or {}
    if not isinstance(raw_input, dict) or not isinstance(raw_input.get("messages", []), list):
        raise InvalidRequestError('input: expected {"messages": [...]}', param="input.messages")
    raw_output = body.get("output")
    try:
        prompt = [parse_message(m, f"input.messages[{i}]") for i, m in enumerate(raw_input.get("messages", []))]
        output = parse_message(raw_output, "output")
    except PairError as exc:
        raise InvalidRequestError(str(exc), param=str(exc).split(":")[0]) from None
    if output.role != "assistant":
        raise InvalidRequestError(f"output.role: must be 'assistant', got {output.role!r}", param="output.role")
    criterion, result = await services.criteria.judge(criterion_id, prompt, output)
    if not result.ok:
        message = f"{criterion.slug}@{criterion.version}: {result.error_message}"
        raise CriterionFailedError(message, code=result.error_code)
    return criterion, result


def _rows(raw: object) -> list[LabelledRow]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("rows: expected a non-empty list of labelled rows", param="rows")
    rows, errors = [], []
    for i, row in enumerate(raw):
        try:
            rows.append(parse_labelled_row(row, i + 1))
        except PairError as exc:
            errors.append(f"rows[{i}]: {exc}")
    if errors:
        raise InvalidRequestError(f"{len(errors)} invalid labelled row(s): {'; '.join(errors[:20])}", param="rows")
    return rows


# In matching order: /judge before /{id}.
ROUTES: tuple[Route, ...] = (
    ("/v1/criteria/judge", judge, "POST"),
    ("/v1/criteria", create_criterion, "POST"),
    ("/v1/criteria", list_criteria, "GET"),
    ("/v1/criteria/{slug}/versions", add_version, "POST"),
    ("/v1/criteria/{id}/alignment", align, "POST"),
    ("/v1/criteria/{id}", get_criterion, "GET"),
)
