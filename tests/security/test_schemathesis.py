"""Bad input against both apps' OpenAPI documents (schemathesis, in-process over ASGI): no 5xx, and every answer
has a documented status, content type and body shape.

The gateway runs with a gateway key (sent with every case; tests/security/test_security.py covers its absence), the
REAL router against a fake upstream on 127.0.0.1, the REAL SQLite store and the embedded reward server with a tiny
model, so the documented best-of-N example is scored for real. Everything runs on schemathesis's own event loop:
the harness's lifespan starts it there. Each operation gets its documented examples, then MAX_EXAMPLES valid and
invalid cases, derandomized (the same cases on every run). The cases are drawn through schemathesis's Python API
under plain hypothesis: its pytest decorator (`schema.parametrize`) fails on pytest 9.2 (`Function._nodeid`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import Receive, Scope, Send

from gateway.api.openapi import gateway_spec
from gateway.config import GatewaySettings
from gateway.reward_serving.openapi import reward_server_spec
from gateway.reward_serving.server import ServerSettings
from gateway.reward_serving.server import create_app as create_reward_app
from tests.gateway.fakes import FakeUpstream, Gateway, running_gateway
from tests.tiny import save_reward_model

GATEWAY_KEY = "gw-schemathesis-key"
MAX_EXAMPLES = 30
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
CONFIG = {
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "with-security-parameters": False},
    "request-timeout": 30,
}


class StrictUpstream(FakeUpstream):
    """The fake upstream, answering like a real provider where the gateway passes a client's body on unchanged:
    a 400 for an `n` it does not serve instead of the fake's crash (n: null means 1)."""

    async def answer(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        n = body.get("n", 1)
        if n is None:
            body["n"] = n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
            return web.json_response({"error": {"message": "n: must be 1..8"}}, status=400)
        return await super().answer(request, body, "ok")


@asynccontextmanager
async def strict_upstream() -> AsyncIterator[FakeUpstream]:
    fake = StrictUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


class GatewayHarness:
    """An ASGI app whose lifespan runs the whole gateway (fake upstream, store, embedded reward server) on the
    event loop that serves it; http requests go to the gateway app."""

    def __init__(self, tmp: Path, models_dir: Path) -> None:
        self.tmp = tmp
        self.models_dir = models_dir
        self.gw: Gateway | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            assert self.gw is not None, "the lifespan has not started"
            await self.gw.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        settings = GatewaySettings(
            upstream_models=("fake:ok",),
            api_keys=(GATEWAY_KEY,),
            models_dir=str(self.models_dir),
            jobs_dir=str(self.tmp / "jobs"),
            training_worker=False,  # jobs are stored, never trained here
        )
        async with AsyncExitStack() as stack:
            try:
                upstream = await stack.enter_async_context(strict_upstream())
                self.gw = await stack.enter_async_context(
                    running_gateway(self.tmp, upstream, self.models_dir, settings=settings)
                )
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_reward_model(root / "support-rm" / "v1", "support-rm", "v1", seed=0)
    return root


@pytest.fixture(scope="module")
def _stop_lifespans() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()  # the apps' lifespans run on schemathesis's loop until told to stop


@pytest.fixture(scope="module")
def gateway_schema(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, _stop_lifespans: None) -> Any:
    app = GatewayHarness(tmp_path_factory.mktemp("gateway"), models_dir)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(CONFIG))


@pytest.fixture(scope="module")
def reward_schema(models_dir: Path, _stop_lifespans: None) -> Any:
    app = create_reward_app(ServerSettings(models_dir=str(models_dir), device="cpu", max_wait_ms=0.0))
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(CONFIG))


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(path, method) for path, item in spec["paths"].items() for method in item]


def fuzz(schema: Any, path: str, method: str, headers: dict[str, str] | None = None) -> None:
    """The operation's explicit examples, then MAX_EXAMPLES valid and invalid cases; every answer is checked."""
    operation = schema[path][method.upper()]
    for example in schema.get_strategies_from_examples(operation):
        settings(BOUNDED, max_examples=1)(given(example)(lambda case: validate(case, headers)))()
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    BOUNDED(given(cases)(lambda case: validate(case, headers)))()


def validate(case: schemathesis.Case, headers: dict[str, str] | None) -> None:
    case.call_and_validate(headers=headers, checks=CHECKS)


@pytest.mark.parametrize(("path", "method"), operations(gateway_spec()))
def test_gateway_answers_bad_input_with_documented_4xx(gateway_schema: Any, path: str, method: str) -> None:
    fuzz(gateway_schema, path, method, {"Authorization": f"Bearer {GATEWAY_KEY}"})


@pytest.mark.parametrize(("path", "method"), operations(reward_server_spec()))
def test_reward_server_answers_bad_input_with_documented_4xx(reward_schema: Any, path: str, method: str) -> None:
    fuzz(reward_schema, path, method)
