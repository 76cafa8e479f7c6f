"""The schema migrations of both dialects (gateway/store/migrations.py): an old database of either is migrated
and keeps its data, reopening is idempotent, a newer schema is refused, and no step's text ever changes (existing
databases were built with it). SQLite keeps its version in PRAGMA user_version, Postgres in rewardgate_schema."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.store import LogQuery, NewEntry, StoreError, open_store
from gateway.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from tests.gateway.conftest import Backend
from tests.gateway.store.conftest import REQUEST, all_logs, count_rows, pair

pytestmark = pytest.mark.anyio
SPEC = {"type": "json"}
# sha256 (first 16 hex digits) of each step's statements joined by newlines, as released. Append; never edit.
SQLITE_STEPS = ["b494f175a713bfee", "b857f4b73dcfb3cd", "66ff3431fa8ed769", "5c82ebcf925b248d", "893f11bf90eec9f0",
                "c05449d5f4592429", "18b8bcf5cab4aa09"]  # fmt: skip
POSTGRES_STEPS = ["b1cda1704c6d03dc", "6cd36c6c6b291ba0", "51d1f341ad035ad3", "93e78a3fcd9fd3b6", "226c348a7f226ce7",
                  "f2d8a09c8dfa6b36", "18b8bcf5cab4aa09"]  # fmt: skip


@pytest.mark.parametrize(
    ("steps", "released"), [(SQLITE_MIGRATIONS, SQLITE_STEPS), (POSTGRES_MIGRATIONS, POSTGRES_STEPS)]
)
def test_released_steps_are_never_edited(steps: tuple[tuple[str, ...], ...], released: list[str]) -> None:
    assert [hashlib.sha256("\n".join(step).encode()).hexdigest()[:16] for step in steps][: len(released)] == released
    assert len(SQLITE_MIGRATIONS) == len(POSTGRES_MIGRATIONS)  # step N means the same tables in both


# ---------------------------------------------------------------- SQLite


async def test_an_old_sqlite_database_is_migrated_and_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a database written by the first schema version only
        for statement in SQLITE_MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO logs (id, created_at, model, request, metadata) VALUES (?, ?, ?, ?, ?)",
            ("log_old", "2025-06-01T00:00:00.000000Z", "m", json.dumps(REQUEST), '{"team": "a"}'),
        )
        db.execute("INSERT INTO candidates (log_id, idx, message, status, score, rank) VALUES (?, 0, ?, 'ok', 1.5, 0)",
                   ("log_old", json.dumps({"role": "assistant", "content": "Paris."})))  # fmt: skip
    for _ in range(2):
        s = await open_store(str(path))
        old = await s.get_log("log_old")
        assert old.metadata == {"team": "a"} and old.candidates[0].score == 1.5
        assert [x.id for x in await all_logs(s, LogQuery(metadata={"team": "a"}))] == ["log_old"]  # backfilled
        await s.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert count_rows(path, "logs") == 1 and count_rows(path, "log_metadata") == 1


async def test_a_newer_sqlite_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        await open_store(str(path))


async def test_a_sqlite_database_from_before_definitions_migrates_and_keeps_its_logs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for statements in SQLITE_MIGRATIONS[:2]:
        for statement in statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO logs (id, created_at, model, request) VALUES ('log_1', '2026-01-01T00:00:00.000000Z',"
               " 'm', '{}')")  # fmt: skip
    db.close()
    store = await open_store(str(path))
    try:
        assert (await store.get_log("log_1")).model == "m"
        assert (await store.create_criterion(slug="a", kind="rule", spec=SPEC)).id == "a@v1"
    finally:
        await store.aclose()


async def test_a_v3_sqlite_database_migrates_and_keeps_its_logs_and_criteria(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path, isolation_level=None)
    for statements in SQLITE_MIGRATIONS[:3]:
        for statement in statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO logs (id, created_at, model, request) VALUES ('log_1', '2026-01-01T00:00:00.000000Z',"
               " 'm', '{}')")  # fmt: skip
    db.execute("INSERT INTO criteria (slug, version, kind, spec, created_at) VALUES ('a', 1, 'rule',"
               " '{\"type\": \"json\"}', '2026-01-01T00:00:00.000000Z')")  # fmt: skip
    db.close()
    store = await open_store(str(path))
    try:
        assert (await store.get_log("log_1")).model == "m"
        assert [d.id for d in await store.list_criteria()] == ["a@v1"]
        await store.create_dataset(name="d")
        assert (await store.add_entries("d", [NewEntry(pair(1))])).added == 1
    finally:
        await store.aclose()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS) >= 4


# ---------------------------------------------------------------- Postgres


async def test_an_old_postgres_schema_is_migrated_and_reopening_is_idempotent(postgres_url: str) -> None:
    old = Backend("postgres", postgres_url)
    await old.sql("CREATE TABLE rewardgate_schema (version INTEGER PRIMARY KEY)")  # as schema v1 left it
    for statement in POSTGRES_MIGRATIONS[0]:
        await old.sql(statement)
    await old.sql("INSERT INTO rewardgate_schema VALUES (1)")
    await old.sql("INSERT INTO logs (id, created_at, model, request, metadata) VALUES (%s, %s, %s, %s, %s)",
                  "log_old", "2025-06-01T00:00:00.000000Z", "m", json.dumps(REQUEST), '{"team": "a"}')  # fmt: skip
    await old.sql("INSERT INTO candidates (log_id, idx, message, status, score, rank) VALUES (%s, 0, %s, 'ok', 1.5, 0)",
                  "log_old", json.dumps({"role": "assistant", "content": "Paris."}))  # fmt: skip
    for _ in range(2):
        s = await open_store(postgres_url)
        got = await s.get_log("log_old")
        assert got.metadata == {"team": "a"} and got.candidates[0].score == 1.5
        assert got.created_at == datetime(2025, 6, 1, tzinfo=UTC)
        assert [x.id for x in await all_logs(s, LogQuery(metadata={"team": "a"}))] == ["log_old"]
        await s.aclose()
    versions = [row[0] for row in await old.sql("SELECT version FROM rewardgate_schema ORDER BY version")]
    assert versions == list(range(1, len(POSTGRES_MIGRATIONS) + 1))  # each step once
    assert await old.count("logs") == 1


async def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    s = await open_store(postgres_url)
    await s.aclose()
    await Backend("postgres", postgres_url).sql("INSERT INTO rewardgate_schema (version) VALUES (%s)",
                                                len(POSTGRES_MIGRATIONS) + 1)  # fmt: skip
    with pytest.raises(StoreError, match="newer"):
        await open_store(postgres_url)
