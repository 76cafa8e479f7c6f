"""The criteria API: definitions (create, list, read, new version), alignment against a labelled set, and
OpenPipe's offline judge. Thin handlers over gateway/criteria_service.py; proxy.create_app mounts them with its
authentication, error path and metrics. Must not import torch, trainer or reward_serving internals.

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

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.bodies import read_bytes, read_json
from gateway.config import GatewaySettings
from gateway.criteria.alignment import LabelledRow, LabelledSetError, parse_labelled_row, parse_labelled_set
from gateway.criteria_service import CriteriaService
from gateway.errors import GatewayError, InvalidRequestError
from gateway.formats import PairError, parse_message


class CriteriaApp(Protocol):
    @property
    def settings(self) -> GatewaySettings: ...

    @property
    def criteria(self) -> CriteriaService: ...


class CriterionFailedError(GatewayError):
    """The criterion could not judge the output (judge unavailable, malformed verdict, reward server down)."""

    status = 502
    type = "api_error"


async def create_criterion(request: Request, app: CriteriaApp) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    _known(body, {"slug", "kind", "spec", "description"})
    definition = await app.criteria.create(
        slug=body.get("slug"), kind=body.get("kind"), spec=body.get("spec"), description=body.get("description", "")
    )
    return JSONResponse(definition.model_dump(mode="json"), status_code=201)


async def add_version(request: Request, app: CriteriaApp) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    _known(body, {"spec", "description"})
    current = await app.criteria.get(request.path_params["slug"])
    definition = await app.criteria.create(
        slug=current.slug,
        kind=current.kind,
        spec=body.get("spec"),
        description=body.get("description", current.description),
        new_version=True,
    )
    return JSONResponse(definition.model_dump(mode="json"), status_code=201)


async def list_criteria(request: Request, app: CriteriaApp) -> Response:
    data = [d.model_dump(mode="json") for d in await app.criteria.list_definitions()]
    return JSONResponse({"object": "list", "data": data})


async def get_criterion(request: Request, app: CriteriaApp) -> Response:
    return JSONResponse((await app.criteria.get(request.path_params["id"])).model_dump(mode="json"))


async def align(request: Request, app: CriteriaApp) -> Response:
    threshold: object = 0.5
    try:
        if request.headers.get("content-type", "").startswith("application/x-ndjson"):
            rows = parse_labelled_set((await read_bytes(request, app.settings.max_body_bytes)).splitlines())
        else:
            body = await read_json(request, app.settings.max_body_bytes)
            _known(body, {"rows", "threshold"})
            threshold = body.get("threshold", 0.5)
            rows = _rows(body.get("rows"))
    except LabelledSetError as exc:
        report = "; ".join(str(e) for e in exc.errors[:20])
        raise InvalidRequestError(f"{len(exc.errors)} invalid labelled row(s): {report}", param="rows") from None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise InvalidRequestError(f"threshold: expected a number in 0..1, got {threshold!r}", param="threshold")
    return JSONResponse(await app.criteria.align(request.path_params["id"], rows, threshold=float(threshold)))


async def judge(request: Request, app: CriteriaApp) -> Response:
    body = await read_json(request, app.settings.max_body_bytes)
    _known(body, {"criterion_id", "criterion_version", "input", "output"})
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
    criterion, result = await app.criteria.judge(criterion_id, prompt, output)
    if not result.ok:
        message = f"{criterion.slug}@{criterion.version}: {result.error_message}"
        raise CriterionFailedError(message, code=result.error_code)
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


def _known(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise InvalidRequestError(f"unknown field {unknown[0]!r} (allowed: {allowed_list})", param=unknown[0])


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


Handler = Callable[[Request, Any], Awaitable[Response]]
# (path, handler, method), in matching order: /judge before /{id}.
ROUTES: tuple[tuple[str, Handler, str], ...] = (
    ("/v1/criteria/judge", judge, "POST"),
    ("/v1/criteria", create_criterion, "POST"),
    ("/v1/criteria", list_criteria, "GET"),
    ("/v1/criteria/{slug}/versions", add_version, "POST"),
    ("/v1/criteria/{id}/alignment", align, "POST"),
    ("/v1/criteria/{id}", get_criterion, "GET"),
)
