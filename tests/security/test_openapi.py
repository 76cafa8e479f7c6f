"""The OpenAPI documents (gateway/api/openapi.py, gateway/reward_serving/openapi.py) against the apps: every route the
app serves is documented and every documented operation is served; /openapi.json serves the document without a
key; the schemas are valid JSON Schema and every $ref resolves; the documented examples are valid requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.api.openapi import chat_example, gateway_spec
from gateway.config import GatewaySettings
from gateway.protocol import ChatCompletionRequest
from gateway.proxy import GUARDED
from gateway.reward_serving.openapi import reward_server_spec, score_example
from gateway.reward_serving.protocol import ScoreRequest
from gateway.reward_serving.server import ServerSettings
from gateway.reward_serving.server import create_app as create_reward_app
from tests.gateway.fakes import Gateway, fake_upstream, running_gateway

pytestmark = pytest.mark.anyio
KEY = "gw-openapi-key"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(api_keys=(KEY,), jobs_dir=str(tmp_path / "jobs"), training_worker=False)
    models = tmp_path / "models"
    models.mkdir()
    async with fake_upstream() as upstream, running_gateway(tmp_path, upstream, models, settings=settings) as gw:
        yield gw


def served(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) of every route; HEAD is Starlette's automatic companion of GET."""
    pairs = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        pairs |= {(route.path, m.lower()) for m in route.methods or () if m != "HEAD"}
    return pairs


def documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in METHODS}


async def test_every_gateway_route_is_documented_and_every_documented_one_served(gw: Gateway) -> None:
    assert served(gw.app) == documented(gateway_spec())


def test_every_reward_server_route_is_documented_and_every_documented_one_served(tmp_path: Path) -> None:
    app = create_reward_app(ServerSettings(models_dir=str(tmp_path)))
    assert served(app) == documented(reward_server_spec())


async def test_the_documents_are_served_without_a_key(gw: Gateway) -> None:
    response = await gw.client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == gateway_spec()
    reward = await gw.reward.get("/openapi.json")
    assert reward.status_code == 200 and reward.json() == reward_server_spec()


async def test_the_documented_security_is_the_enforced_one(gw: Gateway) -> None:
    """/v1/* and OpenPipe's /api/v1/* need the key (the document's default); the rest is declared open
    (`security: []`) and is."""
    spec = gateway_spec()
    assert spec["components"]["securitySchemes"]["gatewayKey"] == {"type": "http", "scheme": "bearer"}
    for path, method in sorted(documented(spec)):
        operation = spec["paths"][path][method]
        declared_open = operation.get("security") == []
        assert declared_open == (not path.startswith(GUARDED)), path
        assert ("401" in operation["responses"]) == path.startswith(GUARDED), path
        if method == "get" and "{" not in path:
            assert (await gw.client.get(path)).status_code in ((200, 304) if declared_open else (401,)), path


@pytest.mark.parametrize("spec", [gateway_spec(), reward_server_spec()], ids=["gateway", "reward-server"])
def test_the_schemas_are_valid_and_every_ref_resolves(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    schemas = spec["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    for path, method in documented(spec):
        operation = spec["paths"][path][method]
        assert operation["summary"] and operation["responses"], (path, method)
        for name in (p["name"] for p in operation.get("parameters", []) if p["in"] == "path"):
            assert "{" + name + "}" in path


def test_the_documented_examples_are_valid_requests() -> None:
    ChatCompletionRequest.model_validate(chat_example())
    ScoreRequest.model_validate(score_example())
    chat = gateway_spec()["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["example"] == chat_example()
    resolve = Draft202012Validator(
        {"$ref": "#/components/schemas/ChatCompletionRequest", **gateway_spec()}  # $refs resolve in the document
    )
    resolve.validate(chat_example())
