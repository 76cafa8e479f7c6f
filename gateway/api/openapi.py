"""The gateway's OpenAPI 3.1 description, served at GET /openapi.json (no key needed).

Every request and response shape is generated from the protocol models (gateway.protocol, pydantic's JSON
schema); this module lists the operations: paths, parameters, statuses and which model each one takes and
returns. tests/security/test_openapi.py checks that every route the app serves is here and nothing else is;
tests/security/test_schemathesis.py checks the app's answers against it. Must not import torch, trainer or
reward_serving internals.
"""

from __future__ import annotations

import functools
import json
import re
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.api.openpipe import PREFIX as OPENPIPE
from gateway.api.openpipe.protocol import (
    DatasetCreateRequest,
    EntriesCreated,
    EntriesCreateRequest,
    LoggedCall,
    MatchedLogs,
    ModelCreateRequest,
    OpenPipeDataset,
    OpenPipeDatasetList,
    OpenPipeDeleted,
    OpenPipeErrorBody,
    OpenPipeJudgement,
    OpenPipeModel,
    OpenPipeModelList,
    ReportAnswer,
    ReportRequest,
    UpdateMetadataRequest,
    UpdateTagsRequest,
)
from gateway.protocol import (
    AddedPairs,
    Alignment,
    AlignmentRequest,
    BaseModelAlias,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceFeedback,
    CriterionCreate,
    CriterionDefinition,
    Dataset,
    DatasetCreate,
    Deleted,
    DistillCreate,
    EntriesUpload,
    Entry,
    ErrorBody,
    Health,
    ImportCreate,
    Job,
    JobCreate,
    Judgement,
    JudgeRequest,
    ListOf,
    Log,
    MetadataPatch,
    ModelListing,
    Page,
    PairsFromLogFilter,
    PairsFromLogIds,
    RatingFeedback,
    ThreadFeedback,
    Uploaded,
    VersionCreate,
)
from gateway.store import MAX_PAGE, METADATA_MAX_KEY_CHARS, METADATA_MAX_KEYS, METADATA_MAX_VALUE_CHARS

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"
NDJSON = "application/x-ndjson"
_ERRORS = MappingProxyType(
    {
        304: "unchanged since the If-None-Match ETag",
        400: "invalid request: the message names the field (`error.param`)",
        401: "no or a wrong gateway key (only when gateway keys are configured)",
        404: "not found",
        409: "the name or slug is taken",
        413: "the request body is over `max_body_bytes`",
        429: "the upstream's rate limit (with its Retry-After)",
        431: "the request's headers are too large",
        502: "the upstream, a criterion or the reward server failed",
        503: "the store is busy (Retry-After: 1)",
        504: "the upstream did not answer in time",
    }
)


def chat_example() -> Schema:
    """The chat request shown in the document (a bare model name goes to the default provider)."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Where is order QB-1?"}],
        "n": 3,
        "store": True,
        "metadata": {"app": "support"},
    }


@functools.cache
def spec_bytes() -> bytes:
    return json.dumps(gateway_spec()).encode()


def gateway_spec() -> Schema:
    """The whole document; a fresh dict on each call."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rewardgate gateway",
            "version": "0.1.0",
            "description": "OpenAI-compatible best-of-N gateway: chat completions scored by reward models, LLM "
            "judges and rules (the op-criteria header), stored logs, criteria, datasets and training jobs.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"gatewayKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"gatewayKey": []}],
    }


# ---------------------------------------------------------------- building blocks


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: Schema, required: tuple[str, ...] = (), *, closed: bool = False) -> Schema:
    out: Schema = {"type": "object", "properties": properties, "required": list(required)}
    if closed:
        out["additionalProperties"] = False
    return out


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, envelope: str = "ErrorBody") -> Schema:
    """The error envelope under each code (304, with no body, rides along for the console's files)."""
    return {str(c): _json(_ref(envelope), _ERRORS[c]) if c >= 400 else {"description": _ERRORS[c]} for c in codes}


def _body(schema: Schema, *, ndjson: bool = False, example: Schema | None = None) -> Schema:
    content: Schema = {"application/json": {"schema": schema}}
    if example is not None:
        content["application/json"]["example"] = example
    if ndjson:
        content[NDJSON] = {"schema": {"type": "string"}}
    return {"required": True, "content": content}


def _path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# ---------------------------------------------------------------- schemas

# Every shape in the document, generated from the protocol models: responses as they serialize, request bodies as
# they validate. Only the pass-through completion is described loosely here: it is the upstream's own shape.
_RESPONSES: tuple[type[BaseModel], ...] = (
    ChatCompletion,
    ModelListing,
    Log,
    Page[Log],
    CriterionDefinition,
    ListOf[CriterionDefinition],
    Judgement,
    Alignment,
    Dataset,
    ListOf[Dataset],
    Entry,
    Page[Entry],
    Uploaded,
    AddedPairs,
    Deleted,
    Job,
    ListOf[Job],
    ListOf[BaseModelAlias],
    ErrorBody,
    Health,
    # OpenPipe's API (/api/v1)
    ReportAnswer,
    MatchedLogs,
    LoggedCall,
    OpenPipeJudgement,
    OpenPipeDataset,
    OpenPipeDatasetList,
    OpenPipeDeleted,
    EntriesCreated,
    OpenPipeModel,
    OpenPipeModelList,
    OpenPipeErrorBody,
)
_REQUESTS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    MetadataPatch,
    JudgeRequest,
    CriterionCreate,
    VersionCreate,
    AlignmentRequest,
    DatasetCreate,
    EntriesUpload,
    PairsFromLogIds,
    PairsFromLogFilter,
    ChoiceFeedback,
    ThreadFeedback,
    JobCreate,
    ReportRequest,
    UpdateMetadataRequest,
    UpdateTagsRequest,
    DatasetCreateRequest,
    EntriesCreateRequest,
    ModelCreateRequest,
    RatingFeedback,
    ImportCreate,
    DistillCreate,
)


def _name(model: type[BaseModel]) -> str:
    """A model's component name: its class name, `Page[Log]` as `Page_Log_` (pydantic's own spelling)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model.__name__)


def _schemas() -> Schema:
    models = [(m, "serialization") for m in _RESPONSES] + [(m, "validation") for m in _REQUESTS]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]  # pydantic's Literal union
    schemas: Schema = dict(top["$defs"])
    metadata = {
        "type": "object",
        "maxProperties": METADATA_MAX_KEYS,
        "propertyNames": {"maxLength": METADATA_MAX_KEY_CHARS},
        "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE_CHARS},
        "description": "OpenAI's metadata: a map of strings",
    }
    request = schemas["ChatCompletionRequest"]
    request["properties"]["metadata"] = _nullable(metadata)
    request["description"] = (
        "An OpenAI chat-completions body. Unknown fields go to the upstream as received, except the ones that "
        "would choose the upstream, its key or its headers (api_base, base_url, api_key, api_version, "
        "custom_llm_provider, headers, extra_headers, organization): those are refused with 400. `store` and "
        "`metadata` are the gateway's and are not forwarded."
    )
    schemas["UpstreamCompletion"] = _obj({"choices": {"type": "array"}, "rewardgate": {"type": "object"}}, ("choices",))
    schemas["UpstreamCompletion"]["description"] = "the upstream's completion as it sent it (+ rewardgate.log_id)"
    return schemas


# ---------------------------------------------------------------- paths


def _paths() -> Schema:
    """Every operation: (method, path, summary, success status, its response, error statuses, body, parameters)."""
    log_id, job_id = _path_param("id", "a log id"), _path_param("id", "a job id")
    ident = _path_param("id", "'slug' (newest version) or 'slug@vN'")
    ds = _path_param("dataset", "the dataset's id or name")
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "page size (default 50)")
    cursor = _query("cursor", {"type": "string"}, "the previous page's next_cursor")
    split = _query("split", {"enum": ["TRAIN", "TEST"]}, "only this split")
    skip = _query("skip_invalid", {"type": "boolean"}, "keep the good entries and report the bad ones")
    when = "ISO 8601 with a timezone (what datetime.fromisoformat reads); empty: no bound"
    filters = (
        _query("model", {"type": "string"}, "the requested model name"),
        _query("since", {"type": "string"}, "created at or after: " + when),
        _query("before", {"type": "string"}, "created before: " + when),
    )
    jsonl = {"description": "JSONL", "content": {NDJSON: {"schema": {"type": "string"}}}}
    by_metadata = " (and metadata.KEY=VALUE query parameters)"
    criterion, dataset, job = _json(_ref("CriterionDefinition")), _json(_ref("Dataset")), _json(_ref("Job"))
    log, added, deleted = _json(_ref("Log")), _json(_ref("AddedPairs")), _json(_ref("Deleted"))
    bodies = _request_bodies()
    rows: list[tuple[str, str, str, int, Schema, tuple[int, ...], Schema | None, tuple[Schema, ...]]] = [
        ("post", "/v1/chat/completions", "Chat completion: a pass-through, or best-of-N with op-criteria",
         200, _chat_ok(), (400, 404, 413, 429, 502, 503, 504), bodies["chat"], _chat_headers()),
        ("get", "/v1/models", "Upstream models and reward models", 200, _json(_ref("ModelListing")), (), None, ()),
        ("get", "/v1/logs", "Stored logs, newest first" + by_metadata,
         200, _json(_ref(_name(Page[Log]))), (400, 503), None, (limit, cursor, *filters)),
        ("get", "/v1/logs/export", "Logs as JSONL" + by_metadata, 200, jsonl, (400, 503), None, filters),
        ("get", "/v1/logs/export/pairs", "Logs as preference pairs (best vs worst candidate), JSONL" + by_metadata,
         200, jsonl, (400, 503), None, filters),
        ("get", "/v1/logs/{id}", "One log", 200, log, (404, 503), None, (log_id,)),
        ("patch", "/v1/logs/{id}/metadata", "Merge metadata into a log (null removes a key)",
         200, log, (400, 404, 413, 503), bodies["metadata"], (log_id,)),
        ("post", "/v1/criteria/judge", "Score one output with one criterion (OpenPipe's offline judge)",
         200, _json(_ref("Judgement")), (400, 404, 413, 502, 503), bodies["judge"], ()),
        ("post", "/v1/criteria", "Create a criterion (v1)", 201, criterion, (400, 409, 413, 503), bodies["criterion"],
         ()),
        ("get", "/v1/criteria", "Every version of every criterion",
         200, _json(_ref(_name(ListOf[CriterionDefinition]))), (503,), None, ()),
        ("post", "/v1/criteria/{slug}/versions", "Add a version (same kind)", 201, criterion, (400, 404, 409, 413, 503),
         bodies["version"], (_path_param("slug", "a criterion slug"),)),
        ("post", "/v1/criteria/{id}/alignment", "Precision/recall of a criterion on labelled rows (JSON or JSONL)",
         200, _json(_ref("Alignment")), (400, 404, 413, 503), bodies["alignment"], (ident,)),
        ("get", "/v1/criteria/{id}", "One criterion version", 200, criterion, (400, 404, 503), None, (ident,)),
        ("post", "/v1/datasets", "Create a dataset", 201, dataset, (400, 409, 413, 503), bodies["dataset"], ()),
        ("get", "/v1/datasets", "Datasets, newest first", 200, _json(_ref(_name(ListOf[Dataset]))), (503,), None, ()),
        ("get", "/v1/datasets/{dataset}", "One dataset", 200, dataset, (404, 503), None, (ds,)),
        ("delete", "/v1/datasets/{dataset}", "Delete a dataset and its entries", 200, deleted, (404, 503), None, (ds,)),
        ("post", "/v1/datasets/{dataset}/entries/from-logs", "Pairs (best vs worst candidate) from stored logs",
         200, added, (400, 404, 413, 503), bodies["from_logs"], (ds,)),
        ("post", "/v1/datasets/{dataset}/entries", "Upload pairs (JSONL or {entries}); bad ones reported by line",
         200, _json(_ref("Uploaded")), (400, 404, 413, 503), bodies["entries"], (ds, skip)),
        ("get", "/v1/datasets/{dataset}/entries", "Entries in insertion order",
         200, _json(_ref(_name(Page[Entry]))), (400, 404, 503), None, (ds, limit, cursor, split)),
        ("delete", "/v1/datasets/{dataset}/entries/{entry_id}", "Delete one entry", 200, deleted, (404, 503), None,
         (ds, _path_param("entry_id", "an entry id"))),
        ("get", "/v1/datasets/{dataset}/export", "The pairs as JSONL (seed format)", 200, jsonl, (400, 404, 503), None,
         (ds, split)),
        ("post", "/v1/feedback", "A user's choice (or an accepted regeneration) as preference pairs, or a rating",
         200, added, (400, 404, 413, 503), bodies["feedback"], ()),
        ("post", "/v1/reward-models", "Start training a reward model", 201, job, (400, 404, 409, 413, 503),
         bodies["job"], ()),
        ("post", "/v1/reward-models/import", "Import a published reward model (a job of kind import)", 201, job,
         (400, 404, 409, 413, 503), bodies["import"], ()),
        ("post", "/v1/reward-models/distill", "Distil a judge: its stored scores as a dataset, and a training job",
         201, job, (400, 404, 409, 413, 503), bodies["distill"], ()),
        ("get", "/v1/reward-models", "Training jobs, newest first",
         200, _json(_ref(_name(ListOf[Job]))), (503,), None, ()),
        ("get", "/v1/reward-models/{id}", "One training job", 200, job, (404, 503), None, (job_id,)),
        ("post", "/v1/reward-models/{id}/cancel", "Cancel a job", 200, job, (400, 404, 503), None, (job_id,)),
        ("get", "/v1/base-models", "The trainer's offline base-model aliases",
         200, _json(_ref(_name(ListOf[BaseModelAlias]))), (), None, ()),
        ("get", "/ui", "The web console's page (its API calls carry the key)", 200, _console_file(), (304,), None, ()),
        ("get", "/ui/static/{name}", "A script, style or image of the console", 200, _console_file(), (304, 404), None,
         (_path_param("name", "a file name of gateway/ui/"),)),
        ("get", "/health", "Liveness", 200, _json(_ref("Health")), (), None, ()),
        ("get", "/metrics", "Prometheus metrics",
         200, {"description": "the exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}, (), None,
         ()),
        ("get", "/openapi.json", "This document", 200, _json({"type": "object"}), (), None, ()),
        *_openpipe_paths(bodies),
    ]  # fmt: skip
    paths: Schema = {}
    for method, path, summary, status, ok, errors, body, params in rows:
        envelope = "OpenPipeErrorBody" if path.startswith(OPENPIPE) else "ErrorBody"
        responses = {str(status): ok, **_errors(*errors, envelope=envelope)}
        paths.setdefault(path, {})[method] = _op(summary, responses, body=body, params=params, path=path)
    return paths


def _openpipe_paths(bodies: dict[str, Schema]) -> list[tuple[Any, ...]]:
    """OpenPipe's API at /api/v1 (gateway.api.openpipe): its paths, shapes and error envelope."""
    ds, slug = _path_param("dataset_id", "the dataset's id"), _path_param("slug", "a reward model's slug")
    model, deleted = _json(_ref("OpenPipeModel")), _json(_ref("OpenPipeDeleted"))
    latest = _json({"anyOf": [_ref("LoggedCall"), {"type": "null"}]}, "the newest log (null when there is none)")
    return [
        ("post", f"{OPENPIPE}/chat/completions", "OpenPipe: chat completion (/v1's; stored unless op-log-request: "
         "false)", 200, _chat_ok(), (400, 404, 413, 429, 502, 503, 504), bodies["chat"], _chat_headers()),
        ("post", f"{OPENPIPE}/report", "OpenPipe: store a call made elsewhere as a log",
         200, _json(_ref("ReportAnswer")), (400, 413, 503), _body(_ref("ReportRequest")), ()),
        ("post", f"{OPENPIPE}/logs/update-metadata", "OpenPipe: merge metadata into every matching log",
         200, _json(_ref("MatchedLogs")), (400, 413, 503), _body(_ref("UpdateMetadataRequest")), ()),
        ("post", f"{OPENPIPE}/logs/update-tags", "OpenPipe: update-metadata's deprecated spelling",
         200, _json(_ref("MatchedLogs")), (400, 413, 503), _body(_ref("UpdateTagsRequest")), ()),
        ("get", f"{OPENPIPE}/local-testing-only-get-latest-logged-call", "OpenPipe: the newest log (its SDK's tests)",
         200, latest, (503,), None, ()),
        ("post", f"{OPENPIPE}/criteria/judge", "OpenPipe: score one output with one criterion",
         200, _json(_ref("OpenPipeJudgement")), (400, 404, 413, 502, 503), bodies["judge"], ()),
        ("post", f"{OPENPIPE}/datasets", "OpenPipe: create a dataset", 200, _json(_ref("OpenPipeDataset")),
         (400, 409, 413, 503), _body(_ref("DatasetCreateRequest")), ()),
        ("get", f"{OPENPIPE}/datasets", "OpenPipe: datasets, newest first",
         200, _json(_ref("OpenPipeDatasetList")), (503,), None, ()),
        ("delete", f"{OPENPIPE}/datasets/{{dataset_id}}", "OpenPipe: delete a dataset", 200, deleted, (404, 503), None,
         (ds,)),
        ("post", f"{OPENPIPE}/datasets/{{dataset_id}}/entries", "OpenPipe: add pairs; bad ones reported, not added",
         200, _json(_ref("EntriesCreated")), (400, 404, 413, 503), _body(_ref("EntriesCreateRequest")), (ds,)),
        ("get", f"{OPENPIPE}/models", "OpenPipe: reward models with their training status",
         200, _json(_ref("OpenPipeModelList")), (503,), None, ()),
        ("post", f"{OPENPIPE}/models", "OpenPipe: train a reward model (trainingConfig.provider openpipeReward)",
         200, model, (400, 404, 409, 413, 503), _body(_ref("ModelCreateRequest")), ()),
        ("get", f"{OPENPIPE}/models/{{slug}}", "OpenPipe: one reward model", 200, model, (404, 503), None, (slug,)),
        ("delete", f"{OPENPIPE}/models/{{slug}}", "OpenPipe: delete a reward model, its versions and jobs",
         200, deleted, (404, 503), None, (slug,)),
    ]  # fmt: skip


def _op(summary: str, responses: Schema, *, body: Schema | None, params: tuple[Schema, ...], path: str) -> Schema:
    """One operation. /v1/* and /api/v1/* need the key (401 without); every route answers 431 to oversized
    headers."""
    openpipe = path.startswith(OPENPIPE + "/")
    auth = path.startswith("/v1/") or openpipe
    tag = "openpipe" if openpipe else path.split("/")[2] if auth else "console" if path.startswith("/ui") else "ops"
    envelope = "OpenPipeErrorBody" if openpipe else "ErrorBody"
    errors = _errors(401, 431, envelope=envelope) if auth else _errors(431, envelope=envelope)
    op: Schema = {"summary": summary, "tags": [tag], "responses": {**responses, **errors}}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = body
    if not auth:
        op["security"] = []
    return op


def _chat_headers() -> tuple[Schema, ...]:
    criteria = {
        "name": "op-criteria",
        "in": "header",
        "schema": {"type": "string"},
        "examples": {"one reward model": {"value": '["support-rm"]'}},
        "description": "a JSON array of criterion ids ('slug', 'slug@vN' or {\"id\", \"weight\"}): turns on "
        "best-of-N; a malformed header or an unknown id is a 400 naming it",
    }
    best_only = {
        "name": "op-best-only",
        "in": "header",
        "schema": {"type": "string", "pattern": "^\\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])\\s*$"},
        "description": "'true' (any case): return only the best choice (all are still scored and stored); "
        "anything but true/false is a 400",
    }
    logged = {
        "name": "op-log-request",
        "in": "header",
        "schema": {"type": "string", "pattern": _any_case("true", "false")},
        "description": "OpenPipe's: store the request (wins over the body's `store`); anything but true/false is a 400",
    }
    tags = {
        "name": "op-tags",
        "in": "header",
        "schema": {"type": "string"},
        "description": "OpenPipe's: a JSON object of metadata (numbers and booleans as text, null dropped), merged "
        "under the body's `metadata`",
    }
    cache = {
        "name": "op-cache",
        "in": "header",
        "schema": {"type": "string", "pattern": _any_case("readWrite", "readOnly", "writeOnly", "true", "false")},
        "description": "OpenPipe's response cache: readWrite, readOnly, writeOnly or false (any case; true = "
        "readWrite). Keyed on the upstream body and the criteria's resolved versions; not for streamed pass-throughs",
    }
    bon = {
        "name": "op-bon",
        "in": "header",
        "schema": {"type": "string"},
        "examples": {"early rejection": {"value": '{"strategy": "early_rejection", "checkpoints": [16, 32, 64]}'}},
        "description": 'with op-criteria: a budgeted best-of-N strategy, a JSON object: {"strategy": "early_rejection",'
        ' "checkpoints", "keep", "min_keep"}, {"strategy": "adaptive", "per_round", "threshold", "max_tokens", '
        '"max_latency_s"} or {"strategy": "best_of_n"} (the default; early rejection without checkpoints or keep runs'
        " the calibrated setting); a bad value is a 400 naming op-bon.<field>; usage.rewardgate reports tokens saved",
    }
    return criteria, best_only, logged, tags, cache, bon


def _any_case(*words: str) -> str:
    """A pattern matching any of `words` in any case, surrounding space allowed (JSON Schema has no (?i))."""
    return "^\\s*(" + "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in w) for w in words) + ")\\s*$"


def _chat_ok() -> Schema:
    ok = _json({"anyOf": [_ref("ChatCompletion"), _ref("UpstreamCompletion")]}, "the completion")
    # With stream: true: server-sent events, each `data:` a chat.completion.chunk (or one error envelope), then
    # `data: [DONE]`. Not given a schema: checkers read each event as an object {event, data} of their own.
    ok["content"]["text/event-stream"] = {}
    return ok


def _console_file() -> Schema:
    types = ("text/html", "text/javascript", "text/css", "image/svg+xml", "image/png", "image/x-icon")
    return {"description": "the file", "content": {t: {"schema": {"type": "string"}} for t in types}}


def _request_bodies() -> dict[str, Schema]:
    """Each operation's body: a component generated from its protocol model (JSONL also taken where noted)."""

    def either(*models: type[BaseModel]) -> Schema:
        return {"anyOf": [_ref(_name(m)) for m in models]}

    return {
        "chat": _body(_ref("ChatCompletionRequest"), example=chat_example()),
        "metadata": _body(_ref("MetadataPatch")),
        "judge": _body(_ref("JudgeRequest")),
        "criterion": _body(_ref("CriterionCreate")),
        "version": _body(_ref("VersionCreate")),
        "alignment": _body(_ref("AlignmentRequest"), ndjson=True),
        "dataset": _body(_ref("DatasetCreate")),
        "entries": _body(_ref("EntriesUpload"), ndjson=True),
        "from_logs": _body(either(PairsFromLogIds, PairsFromLogFilter)),
        "feedback": _body(either(ChoiceFeedback, ThreadFeedback, RatingFeedback)),
        "job": _body(_ref("JobCreate")),
        "import": _body(_ref("ImportCreate")),
        "distill": _body(_ref("DistillCreate")),
    }
