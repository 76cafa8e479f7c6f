"""Several reward servers behind one client (gateway/criteria/reward_client.py): requests spread round robin, a server
that is down, overloaded or failing is retried on the next one, a failed one cools down, and when every server
fails the caller sees the last failure. The servers are fake `send` functions keyed by host; the last test goes over
real HTTP (aiohttp underneath)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from yarl import URL

from gateway.cli import resolve_settings
from gateway.criteria.reward_client import Reply, RewardServers, RewardServerUnreachable, reward_server_client
from tests.gateway.fakes import until

pytestmark = pytest.mark.anyio
Behaviour = Callable[[URL, bytes | None], Reply]


def ok(url: URL, body: bytes | None) -> Reply:
    return Reply(200, orjson.dumps({"served_by": url.host, "path": url.path, "query": url.query_string,
                                    "body": json.loads(body or b"null")}))  # fmt: skip


def down(url: URL, body: bytes | None) -> Reply:
    raise RewardServerUnreachable("connection refused")


def overloaded(url: URL, body: bytes | None) -> Reply:
    return Reply(429, b'{"error": "queue full"}')


class Servers:
    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.hits: Counter[str] = Counter()

    async def __call__(self, method: str, url: URL, body: bytes | None, timeout_s: float) -> Reply:
        assert url.host is not None
        self.hits[url.host] += 1
        return self.behaviours[url.host](url, body)


def client(servers: Servers, clock: Callable[[], float] = lambda: 0.0) -> RewardServers:
    urls = [f"http://{host}:8081/prefix" for host in servers.behaviours]
    return RewardServers(urls, send=servers, clock=clock)


async def post(http: RewardServers, path: str, body: object) -> Reply:
    return await http.request("POST", path, body=orjson.dumps(body), timeout_s=5.0)


async def get(http: RewardServers, path: str) -> Reply:
    return await http.request("GET", path, timeout_s=5.0)


async def test_requests_spread_round_robin_with_path_query_and_body() -> None:
    servers = Servers(a=ok, b=ok, c=ok)
    http = client(servers)
    answers = [(await post(http, "/v1/score?x=1", {"n": i})).json() for i in range(6)]
    assert servers.hits == {"a": 2, "b": 2, "c": 2}
    assert [a["served_by"] for a in answers[:3]] == ["a", "b", "c"]
    assert {a["path"] for a in answers} == {"/prefix/v1/score"} and answers[4]["body"] == {"n": 4}
    assert {a["query"] for a in answers} == {"x=1"}


async def test_a_down_or_overloaded_server_is_retried_on_the_next_and_cools_down() -> None:
    now = [0.0]
    servers = Servers(a=down, b=overloaded, c=ok)
    http = client(servers, clock=lambda: now[0])
    first = await post(http, "/v1/score", {})
    assert first.status == 200 and first.json()["served_by"] == "c"
    assert servers.hits == {"a": 1, "b": 1, "c": 1}
    for _ in range(4):  # a and b cool down: c is asked first
        assert (await get(http, "/v1/models")).json()["served_by"] == "c"
    assert servers.hits == {"a": 1, "b": 1, "c": 5}
    now[0] = 60.0  # cooled down: a gets its turn again (and fails over again)
    servers.behaviours["a"] = ok
    served = {(await get(http, "/v1/models")).json()["served_by"] for _ in range(3)}
    assert served == {"a", "c"} and servers.hits["b"] == 2  # b, still overloaded, passed its turn on


async def test_when_every_server_fails_the_last_failure_is_what_the_caller_sees() -> None:
    response = await post(client(Servers(a=down, b=overloaded)), "/v1/score", {})
    assert response.status == 429  # a is down, so b's 429 is the last answer
    with pytest.raises(RewardServerUnreachable):
        await post(client(Servers(a=overloaded, b=down)), "/v1/score", {})


def test_the_setting_takes_several_comma_separated_urls() -> None:
    settings = resolve_settings({"reward_server_url": "http://rm-0:8081, http://rm-1:8081"}, environ={})
    assert reward_server_client(settings.reward_server_url).urls == ["http://rm-0:8081", "http://rm-1:8081"]


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
        http = reward_server_client(f"{dead},{live}")
        try:
            for _ in range(3):  # whichever comes first in turn, the dead one is skipped
                response = await post(http, "/v1/score", {"model": "tiny-rm", "conversations": [conversation]})
                assert response.status == 200 and response.json()["version"] == "v1"
            assert (await get(http, "/v1/models")).json()["data"][0]["slug"] == "tiny-rm"
        finally:
            await http.aclose()
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
        http = reward_server_client(url)
        try:
            with pytest.raises(TimeoutError):
                await http.request("GET", "/v1/models", timeout_s=0.2)
        finally:
            await http.aclose()
    finally:
        await runner.cleanup()
