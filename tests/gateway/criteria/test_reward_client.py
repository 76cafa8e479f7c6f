"""Several reward servers behind one client (gateway/criteria/reward_client.py): requests spread round robin, a server
that is down, overloaded or failing is retried on the next one, a failed one cools down, and when every server
fails the caller sees the last failure. The servers are httpx.MockTransport handlers keyed by host."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.cli import resolve_settings
from gateway.criteria.reward_client import SpreadTransport, reward_server_client
from tests.gateway.fakes import until

pytestmark = pytest.mark.anyio
Behaviour = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"served_by": request.url.host, "path": request.url.path,
                                     "body": json.loads(request.content or b"null")})  # fmt: skip


def down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def overloaded(request: httpx.Request) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "queue full"})


class Servers:
    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.hits: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hits[request.url.host] += 1
        return self.behaviours[request.url.host](request)


def client(servers: Servers, clock: Callable[[], float] = lambda: 0.0) -> httpx.AsyncClient:
    urls = [f"http://{host}:8081/prefix" for host in servers.behaviours]
    transport = SpreadTransport(urls, transport=httpx.MockTransport(servers), clock=clock)
    return httpx.AsyncClient(transport=transport, base_url="http://reward-servers")


async def test_requests_spread_round_robin_with_path_query_and_body() -> None:
    servers = Servers(a=ok, b=ok, c=ok)
    async with client(servers) as http:
        answers = [(await http.post("/v1/score?x=1", json={"n": i})).json() for i in range(6)]
    assert servers.hits == {"a": 2, "b": 2, "c": 2}
    assert [a["served_by"] for a in answers[:3]] == ["a", "b", "c"]
    assert {a["path"] for a in answers} == {"/prefix/v1/score"} and answers[4]["body"] == {"n": 4}


async def test_a_down_or_overloaded_server_is_retried_on_the_next_and_cools_down() -> None:
    now = [0.0]
    servers = Servers(a=down, b=overloaded, c=ok)
    async with client(servers, clock=lambda: now[0]) as http:
        first = await http.post("/v1/score", json={})
        assert first.status_code == 200 and first.json()["served_by"] == "c"
        assert servers.hits == {"a": 1, "b": 1, "c": 1}
        for _ in range(4):  # a and b cool down: c is asked first
            assert (await http.get("/v1/models")).json()["served_by"] == "c"
        assert servers.hits == {"a": 1, "b": 1, "c": 5}
        now[0] = 60.0  # cooled down: a gets its turn again (and fails over again)
        servers.behaviours["a"] = ok
        served = {(await http.get("/v1/models")).json()["served_by"] for _ in range(3)}
        assert served == {"a", "c"} and servers.hits["b"] == 2  # b, still overloaded, passed its turn on


async def test_when_every_server_fails_the_last_failure_is_what_the_caller_sees() -> None:
    async with client(Servers(a=down, b=overloaded)) as http:
        response = await http.post("/v1/score", json={})
    assert response.status_code == 429  # a is down, so b's 429 is the last answer
    async with client(Servers(a=overloaded, b=down)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post("/v1/score", json={})


def test_the_setting_takes_several_comma_separated_urls() -> None:
    settings = resolve_settings({"reward_server_url": "http://rm-0:8081, http://rm-1:8081"}, environ={})
    http = reward_server_client(settings.reward_server_url, timeout_s=5.0)
    transport = http._transport
    assert isinstance(transport, SpreadTransport)
    assert [str(u) for u in transport._bases] == ["http://rm-0:8081", "http://rm-1:8081"]


async def test_over_real_http_a_dead_replica_is_skipped_and_a_slow_one_times_out(tmp_path: Path) -> None:
    import asyncio
    import socket

    import uvicorn
    from aiohttp import web

    from gateway.reward_serving.server import ServerSettings
    from gateway.reward_serving.server import create_app as create_reward_app
    from tests.tiny import save_reward_model

    save_reward_model(tmp_path / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    reward_app = create_reward_app(ServerSettings(models_dir=str(tmp_path), device="cpu"))
    server = uvicorn.Server(uvicorn.Config(reward_app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started)
        live = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        async with reward_server_client(f"{dead},{live}", timeout_s=10.0) as http:
            for _ in range(3):  # whichever comes first in turn, the dead one is skipped
                response = await http.post("/v1/score", json={"model": "tiny-rm", "conversations": [conversation]})
                assert response.status_code == 200 and response.json()["version"] == "v1"
            assert (await http.get("/v1/models")).json()["data"][0]["slug"] == "tiny-rm"
    finally:
        server.should_exit = True
        await task

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/models", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with reward_server_client(url, timeout_s=0.2) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/v1/models")
    finally:
        await runner.cleanup()
