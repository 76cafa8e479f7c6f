"""What each dialect owns (gateway/store/sqlite.py, postgres.py): urls, the SQLite worker thread, the Postgres
pool and its cancellation rule; and that the Dialect interface is the only thing the two backends differ in (one
Store class over both, each dialect exactly the interface's methods)."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.store import LogNotFoundError, Store, StoreBusyError, StoreError, open_store
from gateway.store.dialect import Dialect
from gateway.store.sqlite import SqliteDialect
from tests.gateway.conftest import Backend
from tests.gateway.store.conftest import T0, add

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------- one store, two dialects


def _interface() -> dict[str, list[str]]:
    """Dialect's methods -> their parameter names after self."""
    methods = {name: fn for name, fn in vars(Dialect).items() if inspect.iscoroutinefunction(fn)}
    return {name: list(inspect.signature(fn).parameters)[1:] for name, fn in methods.items()}


def _methods(dialect: type) -> dict[str, list[str]]:
    """The dialect class's public methods (all but the `open` factory) -> parameter names after self and, for
    the SQL methods (decorated), after the connection."""
    out = {}
    for name, fn in vars(dialect).items():
        if name.startswith("_") or name == "open" or not callable(fn):
            continue
        wrapped = getattr(fn, "__wrapped__", None)
        out[name] = list(inspect.signature(wrapped or fn).parameters)[2 if wrapped else 1 :]
    return out


def test_both_dialects_are_exactly_the_dialect_interface() -> None:
    pytest.importorskip("psycopg")
    from gateway.store.postgres import PostgresDialect

    assert len(_interface()) == 24
    assert _methods(SqliteDialect) == _interface()
    assert _methods(PostgresDialect) == _interface()


async def test_open_store_builds_the_one_store_class_on_either_dialect(backend: Backend) -> None:
    s = await open_store(backend.url)
    try:
        assert type(s) is Store
        assert type(s.dialect).__name__ == {"sqlite": "SqliteDialect", "postgres": "PostgresDialect"}[backend.name]
    finally:
        await s.aclose()


def test_a_sqlite_store_imports_no_psycopg(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from gateway.store import open_store\n"
        "async def main():\n"
        f"    await (await open_store({str(tmp_path / 'x.db')!r})).aclose()\n"
        "asyncio.run(main())\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool')], 'psycopg imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- SQLite


async def test_sqlite_urls_memory_and_unsupported_schemes(tmp_path: Path) -> None:
    memory = await open_store(":memory:", clock=lambda: T0)
    log = await add(memory)
    assert (await memory.get_log(log.id)).created_at == T0
    await memory.aclose()
    for url in (f"sqlite:///{tmp_path}/a.db", str(tmp_path / "b.db")):  # sqlite:////abs/path and a bare path
        s = await open_store(url)
        await add(s)
        await s.aclose()
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()
    with pytest.raises(StoreError, match="unsupported store url scheme 'mysql'") as info:
        await open_store("mysql://user:s3cret@localhost/logs")
    assert "s3cret" not in str(info.value)
    with pytest.raises(StoreError):
        await open_store(str(tmp_path / "missing-dir" / "c.db"))


async def test_sqlite_aclose_stops_the_worker_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    s = await open_store(str(tmp_path / "logs.db"))
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("rewardgate-store")]
    assert len(workers) == 1
    await s.aclose()
    assert not workers[0].is_alive()


# ---------------------------------------------------------------- Postgres


async def test_an_unreachable_postgres_fails_at_open_without_the_password() -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError) as info:
        await open_store(f"postgres://user:s3cret@127.0.0.1:{port}/logs")
    assert "s3cret" not in str(info.value) and not isinstance(info.value, StoreBusyError)


async def test_a_postgres_create_whose_caller_is_cancelled_still_commits(postgres_url: str) -> None:
    # Not on SQLite: its executor drops a call cancelled before the worker thread has picked it up.
    backend = Backend("postgres", postgres_url)
    s = await open_store(backend.url)
    caller = asyncio.create_task(add(s))
    await asyncio.sleep(0)  # one turn of the loop: the create is handed to the store, not waited for
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await s.aclose()  # calls already running finish first
    assert await backend.count("logs") == 1 and await backend.count("candidates") == 3


async def test_postgres_waiting_for_a_pooled_connection_is_bounded(postgres_url: str) -> None:
    from gateway.store.postgres import PostgresDialect

    dialect = await PostgresDialect.open(postgres_url, pool_size=1, busy_timeout_s=0.2)
    s = Store(dialect)
    try:
        async with dialect._pool.connection():  # the only connection is taken
            with pytest.raises(StoreBusyError, match="no free connection"):
                await asyncio.wait_for(s.get_log("log_x"), timeout=30)
        with pytest.raises(LogNotFoundError):
            await s.get_log("log_x")
    finally:
        await s.aclose()
