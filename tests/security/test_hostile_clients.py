"""Hostile and careless clients over real HTTP (uvicorn with the servers' own protocol, on 127.0.0.1), against both
apps: malformed credentials, clients that leave mid-body or while their answer is being made, slow headers and
slow bodies, and a fuzz of random bytes, truncated and stalled bodies and random headers at every route. What must
hold: no 5xx from a client's doing, no traceback at ERROR, a gone client's upstream calls cancelled, nothing
stored for it, a slow client cut off with 408.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.api.openapi import gateway_spec
from gateway.config import GatewaySettings
from gateway.reward_serving.http import RedactedAccessLog, bounded_protocol, redact_query_secrets
from gateway.reward_serving.openapi import reward_server_spec
from gateway.reward_serving.server import ServerSettings
from gateway.reward_serving.server import create_app as create_reward_app
from tests.gateway.fakes import MESSAGES, FakeUpstream, Gateway, fake_upstream, running_gateway, until
from tests.tiny import save_reward_model

pytestmark = pytest.mark.anyio
KEY = "gw-hostile-key"
QUICK = 0.4  # seconds: the header and body timeouts of these servers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with fake_upstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1")
    return root


@asynccontextmanager
async def over_http(app: Any) -> AsyncIterator[int]:
    """`app` (its lifespan already entered) served by uvicorn with the servers' header-timeout protocol."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", http=bounded_protocol(QUICK)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), timeout=10)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def gateway(tmp_path: Path, upstream: FakeUpstream, models_dir: Path) -> AsyncIterator[tuple[Gateway, int]]:
    settings = GatewaySettings(
        api_keys=(KEY,), body_timeout_s=QUICK, header_timeout_s=QUICK, jobs_dir=str(tmp_path / "jobs")
    )
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw, over_http(gw.app) as port:
        yield gw, port


async def exchange(port: int, data: bytes, *, close: bool = False, wait_s: float = 5.0) -> bytes:
    """Send `data` on a new connection; then either close at once (`close`: a client that leaves) or read what the
    server answers until it closes the connection or `wait_s` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.close()
        return b""
    answer = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
    except TimeoutError:
        pass
    writer.close()
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    return length is not None and len(body) >= int(length.group(1))


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def statuses(metrics: str, prefix: str) -> dict[str, float]:
    """{status: count} over every route of `<prefix>_requests_total`."""
    out: dict[str, float] = {}
    for status, count in re.findall(rf'{prefix}_requests_total{{route="[^"]*",status="(\d+)"}} ([0-9.e+]+)', metrics):
        out[status] = out.get(status, 0.0) + float(count)
    return out


def no_error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- credentials


async def test_a_malformed_credential_is_a_401_on_every_route_never_a_500(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = GatewaySettings(api_keys=(KEY,), jobs_dir=str(tmp_path / "jobs"), training_worker=False)
    hostile = [b"Bearer gw-hostile-key\xc3\xa9", b"Bearer \xff\xfe", "Bearer ключ".encode(), b"Bearer", b"\xff"]
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        for path, item in gateway_spec()["paths"].items():
            if not path.startswith("/v1/"):
                continue
            url = "/".join("x" if p.startswith("{") else p for p in path.split("/"))
            for method in item:
                for value in hostile:
                    response = await gw.client.request(method.upper(), url, headers={"authorization": value})
                    assert response.status_code == 401, (method, url, value, response.text)
                    assert response.json()["error"]["param"] == "authorization"
    assert no_error_logs(caplog) == []


# ---------------------------------------------------------------- clients that leave


async def test_a_client_that_leaves_mid_body_is_a_499_at_info_not_a_500(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n"
    async with gateway(tmp_path, upstream, models_dir) as (gw, port):
        for path in ("/v1/chat/completions", "/v1/datasets", "/v1/criteria/judge"):
            request = (head.format(path, KEY) + "Content-Length: 1000\r\n\r\n" + '{"model": "o').encode()
            await exchange(port, request, close=True)

        async def counted() -> bool:
            return statuses((await gw.client.get("/metrics")).text, "rewardgate").get("499", 0) == 3

        await until_async(counted)
        assert "500" not in statuses((await gw.client.get("/metrics")).text, "rewardgate")
    assert no_error_logs(caplog) == []
    assert any("the client left after sending" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


@pytest.mark.parametrize(
    ("body", "headers", "calls"),
    [
        ({"model": "hold", "messages": MESSAGES, "store": True}, {}, 1),
        ({"model": "solo:hold", "messages": MESSAGES, "n": 4, "store": True}, {"op-criteria": '["tiny-rm"]'}, 4),
    ],
    ids=["passthrough", "best-of-4"],
)
async def test_a_gone_client_cancels_its_upstream_calls_and_nothing_is_stored(
    tmp_path: Path,
    upstream: FakeUpstream,
    models_dir: Path,
    body: dict[str, Any],
    headers: dict[str, str],
    calls: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with gateway(tmp_path, upstream, models_dir) as (gw, port):
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"})
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=headers, timeout=60))
        await until(lambda: upstream.counts["hold"] == calls, timeout=10)  # every upstream call is in flight
        left = time.monotonic()
        request.cancel()  # the client goes away: httpx drops its connection
        await client.aclose()
        await until(lambda: upstream.cancelled == calls, timeout=5)
        waited = max(upstream.cancelled_at) - left
        assert waited < 1.0, f"the upstream calls ran on {waited:.3f} s after the client left"

        async def counted() -> bool:
            return statuses((await gw.client.get("/metrics")).text, "rewardgate").get("499", 0) == 1

        await until_async(counted)
        assert (await gw.store.list_logs()).logs == ()  # no answer was given: nothing is stored
    assert no_error_logs(caplog) == []


async def until_async(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- slow clients


async def test_slow_headers_and_slow_bodies_are_cut_off_with_408(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reward_app = create_reward_app(
        ServerSettings(models_dir=str(models_dir), device="cpu", body_timeout_s=QUICK, header_timeout_s=QUICK)
    )
    async with gateway(tmp_path, upstream, models_dir) as (_, port), over_http(reward_app) as reward_port:
        for target, path in ((port, "/v1/chat/completions"), (reward_port, "/v1/score")):
            # nothing at all, then headers that never end: 408, and the connection is closed
            for partial in (b"", f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()):
                started = time.monotonic()
                answer = await exchange(target, partial, wait_s=5)
                assert status_of(answer) == 408 and b"connection: close" in answer.lower(), answer
                assert time.monotonic() - started < 3
            # whole headers, then a body that stops coming: 408 from the app
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
            answer = await exchange(target, head.encode() + b'{"model": ', wait_s=5)
            assert status_of(answer) == 408, answer
            assert b"did not arrive within" in answer
    assert no_error_logs(caplog) == []


# ---------------------------------------------------------------- the access log


def test_keys_in_a_query_string_never_reach_the_access_log() -> None:
    assert redact_query_secrets("/v1/logs?api_key=sk-123&limit=5&token=t") == "/v1/logs?api_key=***&limit=5&token=***"
    assert redact_query_secrets("/v1/logs?limit=5") == "/v1/logs?limit=5"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/logs?API-KEY=sk-secret", "1.1", 401), None,
    )  # fmt: skip
    assert RedactedAccessLog().filter(record) and "sk-secret" not in record.getMessage()


# ---------------------------------------------------------------- fuzz


async def test_fuzz_random_bytes_truncated_and_stalled_bodies_and_random_headers_at_every_route(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(14)
    reward_app = create_reward_app(
        ServerSettings(models_dir=str(models_dir), device="cpu", body_timeout_s=QUICK, header_timeout_s=QUICK)
    )
    async with (
        gateway(tmp_path, upstream, models_dir) as (gw, port),
        reward_app.router.lifespan_context(reward_app),
        over_http(reward_app) as reward_port,
    ):
        cases = 0
        for target, spec in ((port, gateway_spec()), (reward_port, reward_server_spec())):
            for path, item in spec["paths"].items():
                url = "/".join("x" if p.startswith("{") else p for p in path.split("/"))
                for method in item:
                    for request in hostile_requests(rng, method.upper(), url):
                        cases += 1
                        answer = await exchange(target, request.data, close=request.leave, wait_s=3)
                        assert not 500 <= status_of(answer) < 600, (method, url, request.data[:200], answer[:300])
        reward_metrics = (await httpx.AsyncClient().get(f"http://127.0.0.1:{reward_port}/metrics")).text
        gateway_metrics = (await gw.client.get("/metrics")).text
    for prefix, text in (("rewardgate", gateway_metrics), ("rewardgate_rm", reward_metrics)):
        assert not [s for s in statuses(text, prefix) if s.startswith("5")], statuses(text, prefix)
    assert no_error_logs(caplog) == []
    assert cases == 5 * sum(
        len(item) for spec in (gateway_spec(), reward_server_spec()) for item in spec["paths"].values()
    )


class Hostile:
    def __init__(self, data: bytes, leave: bool = False) -> None:
        self.data = data
        self.leave = leave  # the client leaves right after sending


def hostile_requests(rng: random.Random, method: str, url: str) -> list[Hostile]:
    """Random body bytes, a body cut short (the client leaves), a stalled body (it waits past the body timeout),
    random header bytes, and a declared length beyond what comes."""
    auth = f"Authorization: Bearer {KEY}\r\n"
    start = f"{method} {url} HTTP/1.1\r\nHost: x\r\n{auth}"
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    header_junk = bytes(rng.choice(b"abc\x7f\x80\xff\xc3\xa9:; ") for _ in range(40))
    return [
        Hostile(f"{start}Content-Length: {len(junk)}\r\n\r\n".encode() + junk),
        Hostile(f"{start}Content-Length: 5000\r\n\r\n".encode() + junk, leave=True),
        Hostile(f"{start}Content-Length: 5000\r\n\r\n".encode() + junk[:10]),  # stalls: 408 after QUICK
        Hostile(start.encode() + b"X-Junk: " + header_junk + b"\r\nContent-Length: 2\r\n\r\n{}"),
        Hostile(f"{start}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n".encode() + junk[:2]),
    ]
