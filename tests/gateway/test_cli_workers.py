"""`rewardgate serve --workers N` as a user starts it: N gateway processes answer on the one port, best-of-N in every
one of them scores through ONE reward-server process that serve started beside them, every worker writes the one
SQLite store (WAL), and stopping serve stops them all."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.gateway.fakes import KEY, MESSAGES, FakeUpstream, serve_process, until

pytestmark = pytest.mark.anyio
WORKERS = 2


def children(pid: int) -> list[int]:
    """The live processes that `pid` spawned (from /proc; not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
async def test_workers_share_the_port_one_reward_server_and_the_store(
    tmp_path: Path, upstream: FakeUpstream, models_dir: Path
) -> None:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.url}
    args = ["--workers", str(WORKERS), "--host", "127.0.0.1", "--port", "0", "--models-dir", str(models_dir),
            "--store-url", f"sqlite:///{tmp_path / 'gw.db'}", "--jobs-dir", str(tmp_path / "jobs")]  # fmt: skip
    async with serve_process(args, env, timeout=120) as served:
        # the reward server, then each worker, says its startup is complete
        await until(lambda: served.text().count("Application startup complete") >= WORKERS + 1, 60)
        text = served.text()
        serving = re.search(r"rewardgate serving on http://127\.0\.0\.1:(\d+) with 2 workers", text)
        assert serving, text[-3000:]
        port = serving.group(1)
        base = f"http://127.0.0.1:{port}"
        processes = children(served.pid)
        assert len(processes) == WORKERS + 1, served.text()[-3000:]  # the workers and one reward server

        answered: set[int] = set()  # a new connection each time: the kernel spreads them over the workers
        for _ in range(200):
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                answered.add((await client.get("/health")).json()["pid"])
            if len(answered) == WORKERS:
                break
        assert len(answered) == WORKERS and answered < set(processes)

        body = {"model": "ok", "messages": MESSAGES, "n": 2, "store": True}
        for i in range(6):
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                response = await client.post(
                    "/v1/chat/completions",
                    json={**body, "metadata": {"i": str(i)}},
                    headers={"op-criteria": '["tiny-rm"]'},
                )
                assert response.status_code == 200, response.text
                for choice in response.json()["choices"]:
                    assert choice["criteria_results"]["tiny-rm"]["status"] == "success", choice
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            logs = (await client.get("/v1/logs", params={"limit": 50})).json()["data"]
        assert sorted(log["metadata"]["i"] for log in logs) == [str(i) for i in range(6)]
    for pid in processes:  # serve stopped them all
        assert not Path(f"/proc/{pid}").exists() or "(zombie)" in Path(f"/proc/{pid}/status").read_text()


async def test_workers_below_one_are_refused(tmp_path: Path) -> None:
    from gateway.cli import main

    assert main(["serve", "--workers", "0", "--store-url", f"sqlite:///{tmp_path / 'gw.db'}"]) == 2
