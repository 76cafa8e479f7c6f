"""Several gateway replicas on one database, on both backends: each replica is a store instance of its own (its
own pool or connection; in the last test its own process). Starting together they migrate once; writing at once
they lose nothing and duplicate nothing, and no concurrent update overwrites another's."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import MAX_PAGE, CandidateRecord, Latencies, LogRecord, LogStore, open_store
from gateway.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from tests.gateway.conftest import Backend

pytestmark = pytest.mark.anyio
REPLICAS = 4
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def replicas(store_url: str) -> AsyncIterator[list[LogStore]]:
    """REPLICAS stores on one database; the first creates it (starting together is the next test's subject)."""
    first = await open_store(store_url)
    stores = [first, *await asyncio.gather(*(open_store(store_url) for _ in range(REPLICAS - 1)))]
    yield stores
    for s in stores:
        await s.aclose()


async def write(s: LogStore, metadata: dict[str, str]) -> LogRecord:
    return await s.create_log(
        model="m",
        request={"messages": [{"role": "user", "content": "hi"}]},
        candidates=[
            CandidateRecord(i, {"role": "assistant", "content": f"c{i}"}, score=1.0 - i, rank=i) for i in (0, 1, 2)
        ],
        latencies=Latencies(total_ms=1.0),
        metadata=metadata,
    )


async def paged(s: LogStore, limit: int) -> list[LogRecord]:
    out: list[LogRecord] = []
    cursor = None
    while True:
        page = await s.list_logs(limit=limit, cursor=cursor)
        out += page.logs
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def test_replicas_starting_together_migrate_once(backend: Backend) -> None:
    stores = await asyncio.gather(*(open_store(backend.url) for _ in range(REPLICAS)))
    try:
        made = await asyncio.gather(*(write(s, {"replica": str(i)}) for i, s in enumerate(stores)))
        assert len({log.id for log in made}) == REPLICAS
    finally:
        for s in stores:
            await s.aclose()
    if backend.name == "sqlite":
        assert await backend.sql("PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
    else:
        versions = await backend.sql("SELECT version FROM rewardgate_schema ORDER BY version")
        assert [v for (v,) in versions] == list(range(1, len(POSTGRES_MIGRATIONS) + 1))  # every step exactly once


async def test_replicas_writing_at_once_lose_and_duplicate_nothing(replicas: list[LogStore], backend: Backend) -> None:
    per_replica = 40
    made = await asyncio.gather(
        *(write(s, {"replica": str(r), "n": str(n)}) for n in range(per_replica) for r, s in enumerate(replicas))
    )
    total = REPLICAS * per_replica
    assert len({log.id for log in made}) == total
    assert await backend.count("logs") == total and await backend.count("candidates") == 3 * total
    expected = {log.id: log for log in made}
    for s in replicas:  # every replica reads every log exactly once, as it was written
        seen = await paged(s, limit=23)
        assert len(seen) == total and {log.id: log for log in seen} == expected
    keys = sorted((log.metadata["replica"], int(log.metadata["n"])) for log in made)
    assert keys == [(str(r), n) for r in range(REPLICAS) for n in range(per_replica)]


async def test_a_cursor_from_one_replica_pages_on_another(replicas: list[LogStore]) -> None:
    await asyncio.gather(*(write(s, {}) for s in replicas * 5))
    first = await replicas[0].list_logs(limit=7)
    assert first.next_cursor is not None
    rest = await replicas[1].list_logs(limit=MAX_PAGE, cursor=first.next_cursor)
    everything = await replicas[2].list_logs(limit=MAX_PAGE)
    assert [log.id for log in first.logs + rest.logs] == [log.id for log in everything.logs]


async def test_metadata_patches_from_replicas_at_once_all_land(replicas: list[LogStore]) -> None:
    log = await write(replicas[0], {})
    await asyncio.gather(
        *(s.update_metadata(log.id, {f"r{r}k{k}": "v"}) for k in range(4) for r, s in enumerate(replicas))
    )
    final = await replicas[-1].get_log(log.id)
    assert final.metadata == {f"r{r}k{k}": "v" for r in range(REPLICAS) for k in range(4)}  # no lost update


async def test_criterion_results_from_replicas_at_once_all_land(replicas: list[LogStore]) -> None:
    log = await write(replicas[0], {})
    result = {"status": "success", "score": 0.5}
    await asyncio.gather(
        *(s.add_criterion_results(log.id, f"judge-{r}-{k}", {0: result, 2: result})
          for k in range(3) for r, s in enumerate(replicas))
    )  # fmt: skip
    by_index = {c.index: c.criteria_results for c in (await replicas[1].get_log(log.id)).candidates}
    slugs = {f"judge-{r}-{k}" for r in range(REPLICAS) for k in range(3)}
    assert set(by_index[0]) == set(by_index[2]) == slugs and by_index[1] == {}


_PROCESS = """
import asyncio, json, sys
from gateway.store import CandidateRecord, Latencies, open_store

async def main(url: str, proc: str, n: int) -> None:
    store = await open_store(url)
    try:
        logs = await asyncio.gather(*(
            store.create_log(model="m", request={"messages": []}, latencies=Latencies(),
                             candidates=[CandidateRecord(0, {"role": "assistant", "content": "x"}, score=1.0, rank=0)],
                             metadata={"proc": proc, "n": str(i)})
            for i in range(n)))
    finally:
        await store.aclose()
    print(json.dumps([log.id for log in logs]))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_replica_processes_lose_and_duplicate_nothing(backend: Backend) -> None:
    processes, per_process = 3, 30
    await (await open_store(backend.url)).aclose()  # created before the replicas start, as a deployment would
    spawned = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PROCESS, backend.url, str(p), str(per_process),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for p in range(processes)
    ]  # fmt: skip
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in spawned)), timeout=120)
    for process, (_, err) in zip(spawned, outputs, strict=True):
        assert process.returncode == 0, err.decode()
    written = [log_id for out, _ in outputs for log_id in json.loads(out)]
    assert len(written) == len(set(written)) == processes * per_process
    s = await open_store(backend.url)
    try:
        stored = await paged(s, limit=MAX_PAGE)
    finally:
        await s.aclose()
    assert sorted(log.id for log in stored) == sorted(written)
    assert sorted((log.metadata["proc"], int(log.metadata["n"])) for log in stored) == [
        (str(p), n) for p in range(processes) for n in range(per_process)
    ]
