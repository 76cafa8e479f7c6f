"""The gateway's OpenAPI 3.1 description, written as code and served at GET /openapi.json (no key needed).

Bodies come from the pydantic wire models where they exist (gateway.protocol); the rest is written here from the
handlers and the store's `to_json`. tests/security/test_openapi.py checks that every route the app serves is here
and nothing else is; tests/security/test_schemathesis.py checks the app's answers against it. Must not import
torch, trainer or reward_serving internals.
"""

from __future__ import annotations

import functools
import json
from types import MappingProxyType
from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.protocol import ChatCompletion, ChatCompletionRequest, ModelListing
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


def _closed(required: tuple[str, ...], **fields: str | Schema) -> Schema:
    """A request object that refuses unknown keys (the handlers' `_known` checks); fields as in `_record`."""
    return _obj({name: _type(spec) for name, spec in fields.items()}, required, closed=True)


def _record(**fields: str | Schema) -> Schema:
    """An object with every key present, as the handlers write it: "type", "type?" (or null), or a schema."""
    props = {name: _type(spec) for name, spec in fields.items()}
    return {"type": "object", "properties": props, "required": list(props)}


def _type(spec: str | Schema) -> Schema:
    if isinstance(spec, dict):
        return spec
    return _nullable({"type": spec[:-1]}) if spec.endswith("?") else {"type": spec}


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> Schema:
    """The error envelope under each code (304, with no body, rides along for the console's files)."""
    return {str(c): _json(_ref("Error"), _ERRORS[c]) if c >= 400 else {"description": _ERRORS[c]} for c in codes}


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


def _list_of(item: Schema, *, paged: bool = False) -> Schema:
    props: Schema = {"object": {"const": "list"}, "data": {"type": "array", "items": item}}
    if paged:
        props |= {"next_cursor": _nullable({"type": "string"}), "has_more": {"type": "boolean"}}
        return _obj(props, ("object", "data", "next_cursor", "has_more"))
    return _obj(props, ("object", "data"))


# ---------------------------------------------------------------- schemas


def _schemas() -> Schema:
    _, top = models_json_schema(
        [(ChatCompletionRequest, "validation"), (ChatCompletion, "serialization"), (ModelListing, "serialization")],
        ref_template=REF,
    )
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
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    envelope = _record(message="string", type="string", param="string?", code="string?")
    schemas |= {
        "Error": _obj({"error": envelope, "invalid": {"type": "array", "items": _ref("EntryError")}}, ("error",)),
        "EntryError": _record(index="integer", line="integer", error="string"),
        "UpstreamCompletion": _obj({"choices": {"type": "array"}, "rewardgate": {"type": "object"}}, ("choices",))
        | {"description": "the upstream's completion as it sent it (+ rewardgate.log_id with store: true)"},
        "Candidate": _record(
            index="integer",
            message="object?",
            status={"enum": ["ok", "error"]},
            finish_reason="string?",
            error="string?",
            score="number?",
            rank="integer?",
            criteria_results="object",
        ),
        "Log": _record(
            id="string",
            created_at="string",
            model="string",
            request="object",
            latencies=_record(upstream_ms="number?", scoring_ms="number?", total_ms="number?"),
            metadata=string_map,
            criteria_versions=string_map,
            candidates={"type": "array", "items": _ref("Candidate")},
        ),
        "Criterion": _record(
            id="string",
            slug="string",
            version="string",
            kind="string",
            description="string",
            spec="object",
            created_at="string",
            alignment="object?",
        ),
        "CriterionRef": _record(slug="string", version="string?", kind="string"),
        "Alignment": _record(
            criterion=_ref("CriterionRef"),
            rows="integer",
            scored="integer",
            errored="integer",
            threshold="number",
            confusion={"type": "object", "additionalProperties": {"type": "integer"}},
            precision="number?",
            recall="number?",
            f1="number?",
            accuracy="number?",
            disagreements="integer",
            disagreement_rows={"type": "array", "items": {"type": "object"}},
            error_rows={"type": "array", "items": {"type": "object"}},
            stored="boolean",
        ),
        "Judgement": _record(
            score="number?",
            normalized="number?",
            explanation="string?",
            criterion=_ref("CriterionRef"),
            usage=_record(prompt_tokens="integer", completion_tokens="integer", total_tokens="integer"),
        ),
        "Dataset": _record(
            id="string",
            object={"const": "dataset"},
            name="string",
            description="string",
            created_at="string",
            entries="integer",
            counts=_record(TRAIN="integer", TEST="integer"),
        ),
        "Entry": _record(
            id="string",
            dataset_id="string",
            created_at="string",
            split={"enum": ["TRAIN", "TEST"]},
            source={"enum": ["upload", "log", "feedback"]},
            source_ref="string?",
            pair="object",
        ),
        "Upload": _record(
            added="integer", invalid={"type": "array", "items": _ref("EntryError")}, dataset=_ref("Dataset")
        ),
        "Added": _record(
            added="integer", skipped={"type": "array", "items": {"type": "object"}}, dataset=_ref("Dataset")
        ),
        "Deleted": _record(id="string", deleted={"const": True}),
        "Job": _record(
            id="string",
            object={"const": "reward_model.job"},
            slug="string",
            version="string?",
            model="string?",
            dataset_id="string",
            base_model="string",
            hyperparameters="object",
            state={"enum": ["PENDING", "QUEUED", "TRAINING", "DEPLOYED", "ERROR"]},
            error="string?",
            progress="object?",
            metrics="object?",
            reward_stats="object?",
            created_at="string",
            updated_at="string",
            resumed="integer",
        ),
        "BaseModel": _record(id="string", description="string", default="boolean"),
    }
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
    criterion, dataset, job = _json(_ref("Criterion")), _json(_ref("Dataset")), _json(_ref("Job"))
    log, added, deleted = _json(_ref("Log")), _json(_ref("Added")), _json(_ref("Deleted"))
    bodies = _request_bodies()
    rows: list[tuple[str, str, str, int, Schema, tuple[int, ...], Schema | None, tuple[Schema, ...]]] = [
        ("post", "/v1/chat/completions", "Chat completion: a pass-through, or best-of-N with op-criteria",
         200, _chat_ok(), (400, 404, 413, 429, 502, 503, 504), bodies["chat"], _chat_headers()),
        ("get", "/v1/models", "Upstream models and reward models", 200, _json(_ref("ModelListing")), (), None, ()),
        ("get", "/v1/logs", "Stored logs, newest first" + by_metadata,
         200, _json(_list_of(_ref("Log"), paged=True)), (400, 503), None, (limit, cursor, *filters)),
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
         200, _json(_list_of(_ref("Criterion"))), (503,), None, ()),
        ("post", "/v1/criteria/{slug}/versions", "Add a version (same kind)", 201, criterion, (400, 404, 409, 413, 503),
         bodies["version"], (_path_param("slug", "a criterion slug"),)),
        ("post", "/v1/criteria/{id}/alignment", "Precision/recall of a criterion on labelled rows (JSON or JSONL)",
         200, _json(_ref("Alignment")), (400, 404, 413, 503), bodies["alignment"], (ident,)),
        ("get", "/v1/criteria/{id}", "One criterion version", 200, criterion, (400, 404, 503), None, (ident,)),
        ("post", "/v1/datasets", "Create a dataset", 201, dataset, (400, 409, 413, 503), bodies["dataset"], ()),
        ("get", "/v1/datasets", "Datasets, newest first", 200, _json(_list_of(_ref("Dataset"))), (503,), None, ()),
        ("get", "/v1/datasets/{dataset}", "One dataset", 200, dataset, (404, 503), None, (ds,)),
        ("delete", "/v1/datasets/{dataset}", "Delete a dataset and its entries", 200, deleted, (404, 503), None, (ds,)),
        ("post", "/v1/datasets/{dataset}/entries/from-logs", "Pairs (best vs worst candidate) from stored logs",
         200, added, (400, 404, 413, 503), bodies["from_logs"], (ds,)),
        ("post", "/v1/datasets/{dataset}/entries", "Upload pairs (JSONL or {entries}); bad ones reported by line",
         200, _json(_ref("Upload")), (400, 404, 413, 503), bodies["entries"], (ds, skip)),
        ("get", "/v1/datasets/{dataset}/entries", "Entries in insertion order",
         200, _json(_list_of(_ref("Entry"), paged=True)), (400, 404, 503), None, (ds, limit, cursor, split)),
        ("delete", "/v1/datasets/{dataset}/entries/{entry_id}", "Delete one entry", 200, deleted, (404, 503), None,
         (ds, _path_param("entry_id", "an entry id"))),
        ("get", "/v1/datasets/{dataset}/export", "The pairs as JSONL (seed format)", 200, jsonl, (400, 404, 503), None,
         (ds, split)),
        ("post", "/v1/feedback", "A user's choice (or an accepted regeneration) as preference pairs",
         200, added, (400, 404, 413, 503), bodies["feedback"], ()),
        ("post", "/v1/reward-models", "Start training a reward model", 201, job, (400, 404, 409, 413, 503),
         bodies["job"], ()),
        ("get", "/v1/reward-models", "Training jobs, newest first",
         200, _json(_list_of(_ref("Job"))), (503,), None, ()),
        ("get", "/v1/reward-models/{id}", "One training job", 200, job, (404, 503), None, (job_id,)),
        ("post", "/v1/reward-models/{id}/cancel", "Cancel a job", 200, job, (400, 404, 503), None, (job_id,)),
        ("get", "/v1/base-models", "The trainer's offline base-model aliases",
         200, _json(_list_of(_ref("BaseModel"))), (), None, ()),
        ("get", "/ui", "The web console's page (its API calls carry the key)", 200, _console_file(), (304,), None, ()),
        ("get", "/ui/static/{name}", "A script, style or image of the console", 200, _console_file(), (304, 404), None,
         (_path_param("name", "a file name of gateway/ui/"),)),
        ("get", "/health", "Liveness", 200, _json(_record(status={"const": "ok"})), (), None, ()),
        ("get", "/metrics", "Prometheus metrics",
         200, {"description": "the exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}, (), None,
         ()),
        ("get", "/openapi.json", "This document", 200, _json({"type": "object"}), (), None, ()),
    ]  # fmt: skip
    paths: Schema = {}
    for method, path, summary, status, ok, errors, body, params in rows:
        responses = {str(status): ok, **_errors(*errors)}
        paths.setdefault(path, {})[method] = _op(summary, responses, body=body, params=params, path=path)
    return paths


def _op(summary: str, responses: Schema, *, body: Schema | None, params: tuple[Schema, ...], path: str) -> Schema:
    """One operation. /v1/* needs the key (401 without); every route answers 431 to oversized headers."""
    auth = path.startswith("/v1/")
    tag = path.split("/")[2] if auth else "console" if path.startswith("/ui") else "ops"
    errors = _errors(401, 431) if auth else _errors(431)
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
    return criteria, best_only


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
    message = _obj({"role": {"type": "string"}}, ("role",))
    spec = {"type": "object", "description": "the kind's definition: see the README's Criteria section"}
    row = _obj(
        {"input": {"type": "array", "items": message, "minItems": 1}, "output": {"anyOf": [_type("string"), message]},
         "label": {"enum": ["PASS", "FAIL"]}, "id": _type("string")},
        ("input", "output", "label"),
    )  # fmt: skip
    nullable_str = _type("string?")
    batch_size = {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": 4096}]}
    hyperparameters = _closed(
        (),
        batch_size=batch_size,
        learning_rate={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        epochs={"type": "integer", "minimum": 1, "maximum": 100},
    )
    return {
        "chat": _body(_ref("ChatCompletionRequest"), example=chat_example()),
        "metadata": _body(_closed(("metadata",), metadata={"type": "object", "additionalProperties": nullable_str})),
        "judge": _body(
            _closed(
                ("criterion_id", "output"),
                criterion_id="string",
                criterion_version={"anyOf": [{"type": "string"}, {"type": "integer"}]},
                input=_obj({"messages": {"type": "array", "items": message}}),
                output=message,
            )
        ),
        "criterion": _body(
            _closed(("slug", "kind", "spec"), slug="string", kind={"enum": ["rule", "llm_judge"]}, spec=spec,
                    description="string")
        ),
        "version": _body(_closed(("spec",), spec=spec, description="string")),
        "alignment": _body(
            _closed(("rows",), rows={"type": "array", "items": row, "minItems": 1},
                    threshold={"type": "number", "minimum": 0, "maximum": 1}),
            ndjson=True,
        ),
        "dataset": _body(_closed(("name",), name="string", description="string")),
        "entries": _body(_closed(("entries",), entries={"type": "array", "items": {"type": "object"}}), ndjson=True),
        "from_logs": _body(
            {"anyOf": [
                _closed(("log_ids",), log_ids={"type": "array", "items": {"type": "string"}, "minItems": 1}),
                _closed(("metadata",), metadata={"type": "object", "additionalProperties": {"type": "string"}},
                        model="string", since="string", before="string"),
            ]}
        ),
        "feedback": _body(
            {"anyOf": [
                _closed(("log_id", "choice_index", "dataset"), log_id="string",
                        choice_index={"type": "integer", "minimum": 0}, dataset="string"),
                _closed(("thread", "dataset"), thread="string", accepted_log_id="string", dataset="string"),
            ]}
        ),
        "job": _body(
            _closed(("dataset", "slug"), dataset="string",
                    slug={"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,127}$"}, base_model="string",
                    hyperparameters=hyperparameters)
        ),
    }  # fmt: skip
