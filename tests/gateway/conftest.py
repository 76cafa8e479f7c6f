"""The gateway tests' shared fixtures: `gw` (the gateway app over ASGI with the fake upstream, the real SQLite store
and the embedded reward server with tiny-rm v1; a module may override `models_dir`), `upstream`, `anyio_backend`.

Store backends for the store tests: a test that takes `backend` (or `store_url`) runs once on SQLite (a file in
tmp_path) and once on Postgres (a fresh schema of the database in REWARDGATE_TEST_POSTGRES_URL, dropped
afterwards). The Postgres run skips cleanly when that variable is not set; scripts/start_test_postgres.sh starts
a throwaway server and prints it. `postgres_url` is the same fresh schema for Postgres-only tests.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from tests import tiny
from tests.gateway.fakes import FakeUpstream, Gateway, fake_upstream, running_gateway
from tests.tiny import save_reward_model

POSTGRES_ENV = "REWARDGATE_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class Backend:
    """One store database for one test: its url, and direct SQL access to it for checks the API cannot make."""

    name: str  # "sqlite" | "postgres"
    url: str

    async def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement (placeholders `%s`) on a connection of its own, committed; its rows, if any."""
        if self.name == "sqlite":
            with sqlite3.connect(self.url) as db:
                return db.execute(statement.replace("%s", "?"), params).fetchall()
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchall() if cur.description is not None else []

    async def count(self, table: str) -> int:
        return int((await self.sql(f"SELECT count(*) FROM {table}"))[0][0])

    @asynccontextmanager
    async def write_lock(self) -> AsyncIterator[None]:
        """Another client holds the write lock of the log tables (readers pass) until the block ends."""
        if self.name == "sqlite":
            locker = sqlite3.connect(self.url, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            return
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            await conn.execute("LOCK TABLE logs, candidates IN EXCLUSIVE MODE")  # plain SELECTs still pass
            try:
                yield
            finally:
                await conn.rollback()


def _with_search_path(url: str, schema: str) -> str:
    """The url with every connection's search_path set to `schema` (libpq's `options` parameter)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -c search_path={schema}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A url of a fresh, empty schema in the test Postgres database; the schema is dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set (scripts/start_test_postgres.sh starts a server)")
    import psycopg  # a set variable with no psycopg installed is a broken setup: fail, do not skip

    schema = f"rgtest_{secrets.token_hex(6)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _with_search_path(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "store.db"))
    return Backend("postgres", request.getfixturevalue("postgres_url"))


@pytest.fixture
def store_url(backend: Backend) -> str:
    """The url of a fresh store database, once per backend."""
    return backend.url


# ---------------------------------------------------------------- the gateway harness


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama base model directory, for training jobs that take seconds."""
    return tiny.save_base(tmp_path_factory.mktemp("base") / "llama", "llama")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with fake_upstream() as fake:
        yield fake


@pytest.fixture
async def gw(tmp_path: Path, upstream: FakeUpstream, models_dir: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, upstream, models_dir) as gateway:
        yield gateway
