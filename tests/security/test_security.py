"""Security: gateway keys on every /v1/* and /api/v1/* route, the provider key kept out of every output, body and
header size limits over real HTTP, no way for a client to choose the upstream, and the console's API behind the key.

The gateway is the real one (router, SQLite store, embedded reward server with a tiny model) in front of a fake
upstream that records what reaches it and, on `always-500`, answers with an error that quotes the provider key
(tests/gateway/fakes.py: `upstream says no (KEY)`). What stays open without a key, by design: /health, /metrics,
/openapi.json and the console's static shell (/ui, /ui/static/*); the shell holds no data, and every call it makes
goes to /v1/* with the key the user typed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web
from starlette.routing import Route

from gateway.api.ui import UI_DIR
from gateway.config import GatewaySettings
from gateway.proxy import GUARDED, MAX_HEADER_BYTES
from gateway.upstream.providers import LiteLLMProvider, ProviderConfig, UpstreamError
from gateway.upstream.router import FORBIDDEN_FIELDS
from tests.gateway.fakes import KEY, MESSAGES, FakeUpstream, Gateway, running_gateway, serve_process, until
from tests.tiny import save_reward_model

pytestmark = pytest.mark.anyio
GATEWAY_KEY = "gw-security-key-5f1e0c9a"
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
CRITERIA = {**AUTH, "op-criteria": '["tiny-rm"]'}
MAX_BODY = 64 * 1024
SAMPLE = Path(__file__).resolve().parents[2] / "trainer" / "samples" / "support_pairs.jsonl"
BAD_KEYS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Bearer {GATEWAY_KEY}x",
    f"Bearer {GATEWAY_KEY[:-1]}",
    f"Bearer x{GATEWAY_KEY}",
    f"Basic {GATEWAY_KEY}",
    GATEWAY_KEY,
    f"Token {GATEWAY_KEY}",
    f"Bearer {KEY}",  # the provider's key is not a gateway key
]


class RecordingUpstream(FakeUpstream):
    """The fake upstream, also recording each request's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        return await super().handle(request)


@asynccontextmanager
async def serve_upstream(fake: FakeUpstream) -> AsyncIterator[FakeUpstream]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    return root


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with serve_upstream(RecordingUpstream()) as fake:
        assert isinstance(fake, RecordingUpstream)
        yield fake


@pytest.fixture
async def evil() -> AsyncIterator[RecordingUpstream]:
    """A second upstream nobody configured: nothing may ever reach it."""
    async with serve_upstream(RecordingUpstream()) as fake:
        assert isinstance(fake, RecordingUpstream)
        yield fake


@pytest.fixture
async def gw(tmp_path: Path, upstream: RecordingUpstream, models_dir: Path) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        upstream_models=("fake:ok",),
        api_keys=(GATEWAY_KEY,),
        models_dir=str(models_dir),
        jobs_dir=str(tmp_path / "jobs"),
        training_worker=False,  # jobs are stored, never trained here
        max_body_bytes=MAX_BODY,
    )
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gateway:
        yield gateway


def routes(gw: Gateway) -> list[tuple[str, str]]:
    out = []
    for route in gw.app.routes:
        assert isinstance(route, Route)
        out += [(route.path, method) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


def concrete(template: str, value: str = "x") -> str:
    return re.sub(r"\{[^}]+\}", value, template)


# ---------------------------------------------------------------- gateway keys


async def test_every_v1_route_refuses_a_missing_or_wrong_key_before_doing_anything(
    gw: Gateway, upstream: RecordingUpstream
) -> None:
    v1 = [(path, method) for path, method in routes(gw) if path.startswith(GUARDED)]  # /v1/* and OpenPipe's
    assert len(v1) >= 39
    body = json.dumps({"model": "ok", "messages": MESSAGES, "store": True, "name": "d"}).encode()
    for path, method in v1:
        for value in BAD_KEYS:
            headers = {"op-criteria": '["tiny-rm"]'} | ({} if value is None else {"Authorization": value})
            response = await gw.client.request(method, concrete(path), content=body, headers=headers)
            assert response.status_code == 401, (method, path, value, response.text)
            error = response.json()["error"]
            assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
            assert GATEWAY_KEY not in response.text and KEY not in response.text
        good = await gw.client.request(method, concrete(path), content=body, headers=AUTH)
        assert good.status_code != 401, (method, path)
    assert upstream.bodies == [] or all(b.get("model") == "ok" for b in upstream.bodies)  # only the good calls


async def test_refused_requests_reach_neither_the_upstream_nor_the_store(
    gw: Gateway, upstream: RecordingUpstream
) -> None:
    chat = {"model": "ok", "messages": MESSAGES, "n": 2, "store": True}
    for value in BAD_KEYS:
        headers = {"op-criteria": '["tiny-rm"]'} | ({} if value is None else {"Authorization": value})
        assert (await gw.client.post("/v1/chat/completions", json=chat, headers=headers)).status_code == 401
        assert (await gw.client.post("/v1/datasets", json={"name": "d"}, headers=headers)).status_code == 401
    assert upstream.bodies == []
    listed = await gw.client.get("/v1/logs", headers=AUTH)
    assert listed.json()["data"] == []
    assert (await gw.client.get("/v1/datasets", headers=AUTH)).json()["data"] == []


async def test_only_health_metrics_the_document_and_the_console_shell_are_open(gw: Gateway) -> None:
    open_routes = [(path, method) for path, method in routes(gw) if not path.startswith(GUARDED)]
    assert {path for path, _ in open_routes} == {"/health", "/metrics", "/openapi.json", "/ui", "/ui/static/{name}"}
    for path, method in open_routes:
        response = await gw.client.request(method, concrete(path, "app.js"))
        assert response.status_code == 200, path
        assert KEY not in response.text and GATEWAY_KEY not in response.text


async def test_the_console_calls_only_v1_routes_and_sends_the_key(gw: Gateway) -> None:
    """The shell is open; every API call it makes goes through api.js, which adds `Authorization: Bearer`, to a
    /v1/* route, which answers 401 without the key."""
    scripts = {file.name: file.read_text() for file in UI_DIR.glob("*.js")}
    assert [name for name, text in scripts.items() if "fetch(" in text] == ["api.js"]
    assert "headers.Authorization = `Bearer ${key}`" in scripts["api.js"]
    calls: set[tuple[str, str]] = set()
    literal = r'(`[^`]*`|"[^"]*")'
    for text in scripts.values():
        prefix = re.findall(r"const path = " + literal, text)  # a page's own route, e.g. /v1/datasets/${id}
        found = re.findall(r'\bapi\("([A-Z]+)",\s*(' + literal[1:-1] + r"|path)", text)
        found += [("GET", target) for target in re.findall(r"\b(?:listAll|download)\(" + literal, text)]
        for method, target in found:
            if target == "path" and not prefix:
                continue  # api.js's listAll(path) and datasets.js's download(path): their callers are collected
            target = prefix[0] if target == "path" else target
            calls.add((method, target.strip('`"').replace("${path}", prefix[0].strip("`") if prefix else "")))
    assert len(calls) >= 12
    for method, target in sorted(calls):
        assert target.startswith("/v1/"), target
        path = re.sub(r"\$\{[^}]+\}", "x", target)
        response = await gw.client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert (await gw.client.request(method, path, headers=AUTH)).status_code != 401, (method, path)
    page = await gw.client.get("/ui")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers


# ---------------------------------------------------------------- the provider key


async def exercise_openpipe(call: Any, judged: dict[str, Any]) -> None:
    """Every route of OpenPipe's mount (/api/v1), failures included."""
    op, chat = "/api/v1", {"model": "ok", "messages": MESSAGES, "n": 2}
    await call("POST", f"{op}/chat/completions", json={"model": "always-500", "messages": MESSAGES})
    headers = {"op-criteria": '["tiny-rm", "judge-down"]', "op-cache": "readWrite", "op-tags": '{"app": "op"}'}
    for _ in range(2):  # a miss, then a hit
        await call("POST", f"{op}/chat/completions", json=chat, headers=headers)
    failed = {"reqPayload": {"model": "ok", "messages": MESSAGES}, "statusCode": 500, "errorMessage": "down"}
    await call("POST", f"{op}/report", json=failed)
    only = [{"field": "tags.app", "equals": "op"}]
    await call("POST", f"{op}/logs/update-metadata", json={"filters": only, "metadata": {"k": "v"}})
    await call("POST", f"{op}/logs/update-tags", json={"filters": only, "tags": {"k": None}})
    await call("GET", f"{op}/local-testing-only-get-latest-logged-call")
    assert (await call("POST", f"{op}/criteria/judge", json=judged)).status_code == 502
    dataset = (await call("POST", f"{op}/datasets", json={"name": "OpenPipe set"})).json()
    await call("GET", f"{op}/datasets")
    entries = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:5]]
    added = f"{op}/datasets/{dataset['id']}/entries"
    await call("POST", f"{op}/datasets/{{dataset_id}}/entries", added, json={"entries": entries})
    config = {"provider": "openpipeReward", "baseModel": "minilm"}
    await call("POST", f"{op}/models", json={"datasetId": dataset["id"], "slug": "op-rm", "trainingConfig": config})
    await call("GET", f"{op}/models")
    await call("GET", f"{op}/models/{{slug}}", f"{op}/models/op-rm")
    await call("DELETE", f"{op}/models/{{slug}}", f"{op}/models/op-rm")
    await call("DELETE", f"{op}/datasets/{{dataset_id}}", f"{op}/datasets/{dataset['id']}")


async def exercise(gw: Gateway, upstream: RecordingUpstream) -> list[httpx.Response]:
    """One call (or more) to every route, failures included: the upstream's echo of the key in its errors, a
    failing stream, candidates and judges that fail. Returns every response."""
    seen: list[httpx.Response] = []
    done: set[tuple[str, str]] = set()

    async def call(method: str, template: str, path: str | None = None, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
        response = await gw.client.request(method, path or template, **kwargs)
        assert response.status_code < 500 or response.json()["error"]["code"] != "internal_error", response.text
        seen.append(response)
        done.add((template, method))
        return response

    chat = "/v1/chat/completions"
    judge_spec = {"model": "fake:always-500", "instructions": "Pass answers that mention a password."}
    await call(
        "POST", "/v1/criteria", json={"slug": "short", "kind": "rule", "spec": {"type": "length", "max_chars": 60}}
    )
    await call("POST", "/v1/criteria", json={"slug": "judge-down", "kind": "llm_judge", "spec": judge_spec})
    await call(
        "POST",
        "/v1/criteria/{slug}/versions",
        "/v1/criteria/short/versions",
        json={"spec": {"type": "length", "max_chars": 80}},
    )
    await call("GET", "/v1/criteria")
    await call("GET", "/v1/criteria/{id}", "/v1/criteria/short@v1")
    # One of three parallel candidates fails (the fake's second call answers 400, quoting the key): stored.
    partial = {"model": "solo:fail-second", "messages": MESSAGES, "n": 3, "store": True, "metadata": {"app": "sec"}}
    assert (await call("POST", chat, json=partial, headers={"op-criteria": '["short"]'})).status_code == 200
    for model in ("ok", "always-500", "solo:always-500"):
        await call("POST", chat, json={"model": model, "messages": MESSAGES, "store": True})
        await call("POST", chat, json={"model": model, "messages": MESSAGES, "stream": True, "store": True})
        for criteria in ('["tiny-rm", "short", "judge-down"]', '["judge-down"]'):
            body = {"model": model, "messages": MESSAGES, "n": 3, "store": True, "metadata": {"app": "sec"}}
            await call("POST", chat, json=body, headers={"op-criteria": criteria})
            await call("POST", chat, json={**body, "stream": True}, headers={"op-criteria": criteria})
    await call("POST", "/v1/chat/completions", json={"model": "ok", "messages": MESSAGES, "api_key": KEY})
    judged = {
        "criterion_id": "judge-down",
        "input": {"messages": MESSAGES},
        "output": {"role": "assistant", "content": "x"},
    }
    assert (await call("POST", "/v1/criteria/judge", json=judged)).status_code == 502
    rows = [{"input": MESSAGES, "output": "Reset it in settings.", "label": "PASS"}]
    await call("POST", "/v1/criteria/{id}/alignment", "/v1/criteria/judge-down/alignment", json={"rows": rows})
    await call("GET", "/v1/models")
    logs = (await call("GET", "/v1/logs", params={"metadata.app": "sec"})).json()["data"]
    assert logs, "nothing was stored"
    log_id = logs[0]["id"]
    await call("GET", "/v1/logs/{id}", f"/v1/logs/{log_id}")
    await call("PATCH", "/v1/logs/{id}/metadata", f"/v1/logs/{log_id}/metadata", json={"metadata": {"k": "v"}})
    await call("GET", "/v1/logs/export")
    await call("GET", "/v1/logs/export/pairs")
    await call("POST", "/v1/datasets", json={"name": "d"})
    await call("GET", "/v1/datasets")
    await call("GET", "/v1/datasets/{dataset}", "/v1/datasets/d")
    pairs = "\n".join(SAMPLE.read_text().splitlines()[:20]).encode()
    jsonl = {"content-type": "application/x-ndjson"}
    await call("POST", "/v1/datasets/{dataset}/entries", "/v1/datasets/d/entries", content=pairs, headers=jsonl)
    await call(
        "POST",
        "/v1/datasets/{dataset}/entries/from-logs",
        "/v1/datasets/d/entries/from-logs",
        json={"log_ids": [log_id]},
    )
    entries = (await call("GET", "/v1/datasets/{dataset}/entries", "/v1/datasets/d/entries")).json()["data"]
    await call("DELETE", "/v1/datasets/{dataset}/entries/{entry_id}", f"/v1/datasets/d/entries/{entries[0]['id']}")
    await call("GET", "/v1/datasets/{dataset}/export", "/v1/datasets/d/export")
    await call("POST", "/v1/feedback", json={"log_id": log_id, "choice_index": 0, "dataset": "fb"})
    await call("GET", "/v1/base-models")
    job = (await call("POST", "/v1/reward-models", json={"dataset": "d", "slug": "sec-rm"})).json()
    await call("GET", "/v1/reward-models")
    await call("GET", "/v1/reward-models/{id}", f"/v1/reward-models/{job['id']}")
    await call("POST", "/v1/reward-models/{id}/cancel", f"/v1/reward-models/{job['id']}/cancel")
    await call("POST", "/v1/reward-models/import", json={"source": "/no/such/model", "slug": "imp-rm"})  # a 400
    await call("POST", "/v1/reward-models/distill", json={"criterion": "judge-down", "slug": "dis-rm"})  # a 400
    await call("DELETE", "/v1/datasets/{dataset}", "/v1/datasets/fb")
    await exercise_openpipe(call, judged)
    for path in ("/health", "/metrics", "/openapi.json", "/ui"):
        await call("GET", path)
    await call("GET", "/ui/static/{name}", "/ui/static/app.js")
    assert done == set(routes(gw)), set(routes(gw)) - done  # every route, so a new one must be added here
    assert any(h.get("Authorization") == f"Bearer {KEY}" for h in upstream.headers)  # the key was in use
    return seen


async def test_the_provider_key_is_in_no_response_log_metric_or_stored_row(
    gw: Gateway, upstream: RecordingUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = await exercise(gw, upstream)
    assert any(r.status_code >= 500 for r in responses) and any("***" in r.text for r in responses)  # echoes seen
    for response in responses:
        assert KEY not in response.text, (response.request.url, response.text)
        assert KEY not in str(response.headers.raw), response.request.url
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in str(record.exc_info) and KEY not in repr(record.args)
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # the failures were logged, without the key
    metrics = await gw.client.get("/metrics")
    assert "rewardgate_requests_total" in metrics.text and KEY not in metrics.text
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("logs.db*"))
    assert b"upstream says no" in stored or b"***" in stored  # the failures' messages were stored, redacted
    assert KEY.encode() not in stored


async def test_litellm_errors_and_reprs_never_carry_the_key() -> None:
    import openai

    request = httpx.Request("POST", "https://api.example.com/v1/messages")
    echo = httpx.Response(401, request=request, json={"error": {"message": f"bad key {KEY}"}})

    async def failing(**kwargs: Any) -> Any:
        raise openai.AuthenticationError(f"invalid x-api-key {KEY}", response=echo, body=None)

    provider = LiteLLMProvider(ProviderConfig("anthropic", "litellm", api_key=KEY), acompletion=failing)
    with pytest.raises(UpstreamError) as info:
        await provider.complete({"model": "claude", "messages": MESSAGES}, timeout=5)
    assert KEY not in str(info.value) and info.value.__cause__ is None and info.value.__suppress_context__
    assert KEY not in repr(provider) and KEY not in repr(ProviderConfig("x", "openai", "http://h", KEY))


async def test_a_real_gateway_process_never_logs_a_key(
    tmp_path: Path, upstream: RecordingUpstream, models_dir: Path
) -> None:
    """`python -m gateway serve --log-level debug` with the provider key in OPENAI_API_KEY: its whole output,
    through failing upstream calls, judges and streams, holds neither the provider key nor the gateway key."""
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.url, "REWARDGATE_API_KEYS": GATEWAY_KEY}
    args = ["--host", "127.0.0.1", "--port", "0", "--models-dir", str(models_dir), "--log-level", "debug",
            "--store-url", f"sqlite:///{tmp_path / 'gw.db'}", "--jobs-dir", str(tmp_path / "jobs")]  # fmt: skip
    async with serve_process(args, env) as served:
        port = served.port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
            spec = {"model": "openai:always-500", "instructions": "Pass answers that mention a password."}
            created = await client.post("/v1/criteria", json={"slug": "judge-down", "kind": "llm_judge", "spec": spec})
            assert created.status_code == 201, created.text
            for model in ("ok", "always-500"):
                body = {"model": model, "messages": MESSAGES, "store": True}
                for extra, headers in [({}, {}), ({"stream": True}, {}), ({"n": 2}, {"op-criteria": '["judge-down"]'})]:
                    response = await client.post("/v1/chat/completions", json=body | extra, headers=headers)
                    assert KEY not in response.text
            assert (await client.post("/v1/chat/completions", json={"model": "ok", "messages": MESSAGES},
                                      headers={"Authorization": "Bearer nope"})).status_code == 401  # fmt: skip
            assert KEY not in (await client.get("/metrics")).text
            assert KEY not in (await client.get("/v1/logs/export")).text
    text = served.text()
    assert "gateway settings" in text and '"POST /v1/chat/completions HTTP/1.1" 500' in text, text[-3000:]
    assert KEY not in text and GATEWAY_KEY not in text


# ---------------------------------------------------------------- size limits, over real HTTP


@asynccontextmanager
async def served(gw: Gateway, http: str) -> AsyncIterator[str]:
    """The gateway app behind uvicorn (the given HTTP parser) on a free loopback port."""
    config = uvicorn.Config(gw.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", http=http)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), 30)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def raw_request(url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are (no client's own limits) and read the status line and headers of the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:  # a server may hang up instead
        return repr(exc).encode()
    finally:
        writer.close()


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_bodies_over_the_limit_are_413_and_headers_over_the_limit_431(gw: Gateway, http: str) -> None:
    chat = json.dumps({"model": "ok", "messages": MESSAGES, "pad": "x" * MAX_BODY}).encode()
    async with served(gw, http) as url, httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
        declared = await client.post("/v1/chat/completions", content=chat, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and declared.json()["error"]["type"] == "invalid_request_error"

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(chat), 8192):
                yield chat[i : i + 8192]

        chunked = await client.post("/v1/datasets", content=chunks())  # no Content-Length: counted as it arrives
        assert chunked.status_code == 413, chunked.text
        assert (await client.post("/v1/feedback", content=b"{" + b" " * MAX_BODY + b"}")).status_code == 413

        under = {"X-Pad": "p" * (MAX_HEADER_BYTES - 1024)}
        assert (await client.get("/v1/logs", headers=under)).status_code == 200
        for headers in ({"X-Pad": "p" * (MAX_HEADER_BYTES + 1)}, {f"X-Pad-{i}": "p" * 100 for i in range(200)}):
            for path in ("/v1/logs", "/health", "/ui"):
                response = await client.get(path, headers=headers)
                assert response.status_code == 431, (path, response.status_code)
                assert response.json()["error"]["param"] == "headers"
    async with served(gw, http) as url:
        # A megabyte of headers: httptools hands them all to the app (431 from it); h11 stops at its own limit.
        huge = await raw_request(url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        refused = (b"HTTP/1.1 431",) if http == "httptools" else (b"HTTP/1.1 400", b"ConnectionResetError", b"Broken")
        assert huge.startswith(refused), huge[:100]  # h11 may hang up before the last byte is sent


# ---------------------------------------------------------------- the upstream is the gateway's choice


async def test_a_client_cannot_choose_the_upstream_its_key_or_its_headers(
    gw: Gateway, upstream: RecordingUpstream, evil: RecordingUpstream
) -> None:
    chat = "/v1/chat/completions"
    for field in sorted(FORBIDDEN_FIELDS):
        for value in (evil.url, {"Authorization": "Bearer stolen"}, "sk-client"):
            body = {"model": "ok", "messages": MESSAGES, field: value}
            for extra, headers in [({}, AUTH), ({"stream": True}, AUTH), ({"n": 2}, CRITERIA)]:
                response = await gw.client.post(chat, json=body | extra, headers=headers)
                assert response.status_code == 400, (field, extra, response.text)
                assert response.json()["error"]["code"] == "forbidden_field"
    assert upstream.bodies == []  # refused before any upstream call

    sneaky = [evil.url, evil.url + "/chat/completions", f"fake:{evil.url}", f"{evil.url.replace('http://', '')}"]
    for model in sneaky:
        await gw.client.post(chat, json={"model": model, "messages": MESSAGES}, headers=AUTH)
    client_headers = {**AUTH, "X-Forwarded-Host": "evil.example", "OpenAI-Organization": "org-evil", "X-Evil": "1"}
    await gw.client.post(chat, json={"model": "ok", "messages": MESSAGES}, headers=client_headers)
    assert evil.bodies == [] and evil.headers == []
    assert upstream.headers, "the configured upstream got the calls"
    for seen in upstream.headers:
        lowered = {k.lower(): v for k, v in seen.items()}
        assert lowered["authorization"] == f"Bearer {KEY}"  # the gateway's provider key, never the client's
        assert GATEWAY_KEY not in json.dumps(seen)
        assert not {"x-forwarded-host", "openai-organization", "x-evil"} & set(lowered)


async def test_litellm_gets_only_chat_parameters_and_the_configured_base() -> None:
    sent: list[dict[str, Any]] = []

    async def record(**kwargs: Any) -> Any:
        sent.append(kwargs)
        raise TimeoutError

    config = ProviderConfig("anthropic", "litellm", base_url="https://configured.example", api_key=KEY)
    provider = LiteLLMProvider(config, acompletion=record)
    body = {"model": "claude", "messages": MESSAGES, "temperature": 0.5, "vendor_field": {"api_base": "http://evil"},
            "extra_body": {"api_base": "http://evil"}, "metadata": {"api_base": "http://evil"}}  # fmt: skip
    with pytest.raises(UpstreamError):
        await provider.complete(body, timeout=5)
    (kwargs,) = sent
    assert kwargs["api_base"] == "https://configured.example" and kwargs["api_key"] == KEY
    assert kwargs["model"] == "anthropic/claude" and kwargs["temperature"] == 0.5
    assert not {"vendor_field", "extra_body", "metadata"} & set(kwargs)


def test_header_limit_is_documented_on_every_operation() -> None:
    from gateway.api.openapi import gateway_spec

    for path, item in gateway_spec()["paths"].items():
        for operation in item.values():
            assert "431" in operation["responses"], path
