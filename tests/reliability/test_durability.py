"""Durability (issue 7): SIGKILL a real `python -m gateway serve` while `store: true` requests are in flight, restart
it on the same store, and check that every ACKNOWLEDGED log (the client got a 200 carrying rewardgate.log_id) is
there, holding what the client was told. Three kill/restart rounds; SQLite always, Postgres when
REWARDGATE_TEST_POSTGRES_URL is set (scripts/start_test_postgres.sh). The upstream and the reward server are the
fakes of tests/reliability/faults.py, served by this test's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.faults import (
    MESSAGES,
    SLUG,
    FaultRewardServer,
    FaultUpstream,
    assert_log_matches,
    fault_reward_server,
    fault_upstream,
)

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "REWARDGATE_TEST_POSTGRES_URL"
ROUNDS = 3
ACKS_PER_ROUND = 120  # acknowledged logs before the kill (then the kill lands 0-30 ms later, at random)
CLIENTS = 16  # requests in flight at any moment


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _postgres_schema_url() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set (scripts/start_test_postgres.sh starts a server)")
    import psycopg

    schema = f"rgdur_{os.getpid()}_{random.randrange(1 << 30)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-c%20search_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'logs.db'}"
    else:
        yield from _postgres_schema_url()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """One `python -m gateway serve` and its output file."""

    process: asyncio.subprocess.Process
    url: str
    log: Path

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, store_url: str, upstream: FaultUpstream, reward: FaultRewardServer, run: int
) -> AsyncIterator[Process]:
    """Start the gateway on `store_url`, ready when it yields; killed (SIGKILL) on exit if still running."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDGATE_")}
    env.update(OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY="sk-durability", PYTHONPATH=str(ROOT))
    flags = {
        "host": "127.0.0.1",
        "port": str(port),
        "store-url": store_url,
        "reward-server-url": reward.url,
        "models-dir": str(tmp_path / "models"),
        "jobs-dir": str(tmp_path / "jobs"),
        "log-level": "warning",
    }
    args = [a for name, value in flags.items() for a in (f"--{name}", value)]
    log = tmp_path / f"gateway-{run}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", *args, stdout=out, stderr=out, cwd=tmp_path, env=env
        )
    server = Process(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                assert process.returncode is None, f"the gateway exited: {server.tail()}"
                try:
                    if (await client.get(server.url + "/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"the gateway did not start: {server.tail()}"
                await asyncio.sleep(0.05)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@dataclass
class Load:
    """Clients sending store: true requests (pass-through and best-of-3, alternating) until told to stop."""

    acknowledged: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (request, reply)
    failed: int = 0  # requests that got no answer: in flight at the kill
    refused: list[str] = field(default_factory=list)  # answers other than 200 before the kill: must stay empty
    stop: bool = False
    counter: itertools.count[int] = field(default_factory=itertools.count)

    async def client(self, url: str, round_: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            while not self.stop:
                seq = next(self.counter)
                best_of_n = seq % 2 == 1
                body: dict[str, Any] = {"model": "openai:m", "messages": MESSAGES, "store": True,
                                        "metadata": {"round": str(round_), "seq": str(seq)}}  # fmt: skip
                headers = {"op-criteria": f'["{SLUG}"]'} if best_of_n else {}
                if best_of_n:
                    body["n"] = 3
                try:
                    response = await http.post("/v1/chat/completions", json=body, headers=headers)
                except httpx.TransportError:
                    self.failed += 1
                    return  # the gateway is gone
                reply = response.json()
                if response.status_code == 200 and reply.get("rewardgate", {}).get("log_id"):
                    self.acknowledged.append((body, reply))
                elif not self.stop:
                    self.refused.append(f"{response.status_code}: {response.text[:200]}")


async def test_every_acknowledged_log_survives_kill_9(tmp_path: Path, store_url: str) -> None:
    load = Load()
    rng = random.Random()
    async with fault_upstream() as upstream, fault_reward_server() as reward:
        for round_ in range(ROUNDS):
            async with gateway_process(tmp_path, store_url, upstream, reward, round_) as server:
                load.stop = False
                target = len(load.acknowledged) + ACKS_PER_ROUND
                clients = [asyncio.create_task(load.client(server.url, round_)) for _ in range(CLIENTS)]
                deadline = time.monotonic() + 60
                while len(load.acknowledged) < target:
                    assert time.monotonic() < deadline, f"too slow: {len(load.acknowledged)} acks; {server.tail()}"
                    await asyncio.sleep(0.005)
                await asyncio.sleep(rng.uniform(0, 0.03))
                server.process.kill()  # SIGKILL, with CLIENTS requests in flight
                await server.process.wait()
                load.stop = True
                await asyncio.gather(*clients)
        assert not load.refused, load.refused[:5]

        restarted = gateway_process(tmp_path, store_url, upstream, reward, ROUNDS)
        async with restarted as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for request, reply in load.acknowledged:
                response = await http.get(f"/v1/logs/{reply['rewardgate']['log_id']}")
                assert response.status_code == 200, f"acknowledged log lost: {reply['rewardgate']['log_id']}"
                assert_log_matches(response.json(), reply, request)
            stored = (await http.get("/v1/logs", params={"limit": 1000})).json()["data"]

    # Logs written but never acknowledged (the answer was lost with the process) may exist; none may be missing.
    assert len(stored) >= len(load.acknowledged) >= ROUNDS * ACKS_PER_ROUND
    assert load.failed > 0  # requests were in flight at every kill
    if store_url.startswith("sqlite:///"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(
        f"\n{store_url.split(':')[0]}: {len(load.acknowledged)} acknowledged logs intact after {ROUNDS} kill -9; "
        f"{load.failed} requests in flight at the kills; {len(stored) - len(load.acknowledged)} stored unacknowledged"
    )
