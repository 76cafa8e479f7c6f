"""The reward server's OpenAPI 3.1 description (DESIGN contract 3), written as code and served at GET /openapi.json.

Bodies come from the wire models (protocol.py); errors are errors.error_reply's envelope. tests/security/ checks the
document against the app's routes and its answers. Imports only its own package, never the gateway's web code.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from .protocol import Health, ModelList, ScoreRequest, ScoreResponse

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"


def score_example() -> Schema:
    """The score request shown in the document."""
    return {
        "model": "support-rm",
        "conversations": [
            [{"role": "user", "content": "Where is order QB-1?"}, {"role": "assistant", "content": "It ships today."}]
        ],
    }


async def openapi_json(request: Request, app: object) -> Response:
    return Response(_spec_bytes(), media_type="application/json")


@functools.cache
def _spec_bytes() -> bytes:
    return json.dumps(reward_server_spec()).encode()


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, *, retry: bool = False) -> Schema:
    out = _json(_ref("Error"), description)
    if retry:
        out["headers"] = {"Retry-After": {"required": True, "schema": {"type": "string"}}}
    return out


def reward_server_spec() -> Schema:
    """The whole document; a fresh dict on each call."""
    _, top = models_json_schema(
        [
            (ScoreRequest, "validation"),
            (ScoreResponse, "serialization"),
            (ModelList, "serialization"),
            (Health, "serialization"),
        ],
        ref_template=REF,
    )
    schemas: Schema = dict(top["$defs"])
    schemas["ScoreRequest"]["description"] = (
        "Each conversation's last message is the assistant response scored; messages follow the preference-data "
        "format (roles system, user, assistant, tool; text content), checked field by field."
    )
    nullable_str = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    envelope = {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": nullable_str,
            "code": nullable_str,
        },
        "required": ["message", "type", "param", "code"],
    }
    schemas["Error"] = {"type": "object", "properties": {"error": envelope}, "required": ["error"]}
    too_large = _error("over max_request_bytes, or more than max_conversations conversations")
    score = {
        "summary": "One raw reward per conversation, in order",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("ScoreRequest"), "example": score_example()}},
        },
        "responses": {
            "200": _json(_ref("ScoreResponse"), "the scores, with the version that scored them"),
            "400": _error("invalid request: the message names the field"),
            "404": _error("unknown model or version"),
            "413": too_large,
            "429": _error("the model's queue is full", retry=True),
            "500": _error("the model failed to load or to run"),
            "503": _error("shutting down or unloading", retry=True),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rewardgate reward server",
            "version": "0.1.0",
            "description": "Batched scoring with trained reward models (rewardgate-rm).",
        },
        "paths": {
            "/v1/score": {"post": score},
            "/v1/models": {
                "get": {
                    "summary": "Every servable model version with its rewardgate.json summary",
                    "responses": {"200": _json(_ref("ModelList"), "the models")},
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and the loaded models",
                    "responses": {
                        "200": _json(_ref("Health"), "the models directory is readable"),
                        "503": _json(_ref("Health"), "the models directory is missing"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "the exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "the document")}}
            },
        },
        "components": {"schemas": schemas},
    }
