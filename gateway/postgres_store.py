"""Postgres implementation of gateway.store.LogStore, for several gateway replicas on one database: the same
records, errors, ids, orders and cursors as gateway/sqlite_store.py. psycopg 3 with an async connection pool;
the schema and its migrations are gateway/postgres_schema.py, the criterion, dataset and job SQL
postgres_criteria.py, postgres_datasets.py and postgres_jobs.py. Imports psycopg, psycopg_pool, the stdlib and
gateway.store (no starlette, httpx, torch or litellm); gateway.store.open_store imports it only for a
postgresql:// url, so SQLite users need no psycopg.

Concurrency between replicas: every write is one transaction; a metadata patch locks its log's row
(SELECT ... FOR UPDATE), a new criterion version takes a transaction-scoped advisory lock on its slug, and
add_entries locks its dataset's row, so read-then-write steps never interleave. Log ids are ULIDs under a
primary key: a log is stored once or not at all.

Timeouts (all map to StoreBusyError, like SQLite's busy timeout): waiting for a row, table or advisory lock
longer than busy_timeout_s (lock_timeout), waiting for a pooled connection longer than busy_timeout_s, and a
statement running longer than statement_timeout_s (statement_timeout).

JSON columns are JSONB: objects come back with Postgres's key order, a "\\u0000" in a string is refused
(InvalidInputError), and a whole float that JSON writes with an exponent (1e+20) comes back as an equal int.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from gateway import postgres_criteria, postgres_datasets, postgres_jobs
from gateway.formats import SPLITS
from gateway.postgres_schema import migrate
from gateway.protocol import CriterionDefinition
from gateway.store import (
    JOB_FIELDS,
    MAX_PAGE,
    AddedEntries,
    CandidateRecord,
    DatasetRecord,
    EntryPage,
    InvalidInputError,
    JobRecord,
    Latencies,
    LogNotFoundError,
    LogPage,
    LogQuery,
    LogRecord,
    MetadataError,
    NewEntry,
    StoreBusyError,
    StoreClosedError,
    StoreError,
    T,
    _utc,
    _utcnow,
    new_id,
    new_log_id,
    validate_metadata,
)
from gateway.store_codec import (
    decode_entry_cursor,
    decode_log_cursor,
    dump_json,
    encode_log_cursor,
    export_jsonl,
    export_pairs,
)

Conn = psycopg.AsyncConnection[Any]
_CONNECT_TIMEOUT_S = 10  # opening one connection (libpq connect_timeout), and the pool's first one
_MIGRATE_TIMEOUT_S = 300  # how long a replica waits for another replica's migration step (and runs its own)


# ---------------------------------------------------------------- logs


_LOG_COLUMNS = "id, created_at, model, request, upstream_ms, scoring_ms, total_ms, metadata, criteria_versions"
_CANDIDATE_COLUMNS = "log_id, idx, message, status, finish_reason, error, score, rank, criteria_results"


async def _insert(conn: Conn, log: LogRecord, texts: Mapping[str, str], candidates: list[tuple[Any, ...]]) -> None:
    lat = log.latencies
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO logs ({_LOG_COLUMNS}) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb, %s::jsonb)",
            (log.id, log.created_at, log.model, texts["request"], lat.upstream_ms, lat.scoring_ms, lat.total_ms,
             texts["metadata"], texts["criteria_versions"]),
        )  # fmt: skip
        if candidates:
            async with conn.cursor() as cur:  # pipelined: one round trip for all of them
                await cur.executemany(
                    f"INSERT INTO candidates ({_CANDIDATE_COLUMNS})"
                    " VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s::jsonb)",
                    candidates,
                )


async def _load(conn: Conn, rows: list[Any]) -> list[LogRecord]:
    """LogRecords for rows of _LOG_COLUMNS, with their candidates fetched in one query."""
    candidates: dict[str, list[CandidateRecord]] = {row[0]: [] for row in rows}
    if rows:
        sql = (f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE log_id = ANY(%s)"
               " ORDER BY rank IS NULL, rank, idx")  # fmt: skip
        for r in await (await conn.execute(sql, (list(candidates),))).fetchall():
            candidates[r[0]].append(CandidateRecord(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]))
    return [
        LogRecord(r[0], r[1].astimezone(UTC), r[2], r[3], Latencies(*r[4:7]), r[7], r[8], tuple(candidates[r[0]]))
        for r in rows
    ]


async def _fetch(conn: Conn, log_id: str) -> LogRecord:
    rows = await (await conn.execute(f"SELECT {_LOG_COLUMNS} FROM logs WHERE id = %s", (log_id,))).fetchall()
    if not rows:
        raise LogNotFoundError(log_id)
    return (await _load(conn, rows))[0]


async def _list(conn: Conn, query: LogQuery, limit: int, after: tuple[datetime, str] | None) -> LogPage:
    clauses: list[str] = []
    params: list[object] = []
    if query.metadata:  # containment of {k: v, ...}: every pair must match (GIN index)
        clauses.append("metadata @> %s::jsonb")
        params.append(dump_json(dict(query.metadata), "query.metadata"))
    since, before = (None if t is None else _utc(t, "query") for t in (query.since, query.before))
    filters = {"model = %s": query.model, "created_at >= %s": since, "created_at < %s": before}
    for clause, arg in filters.items():
        if arg is not None:
            clauses.append(clause)
            params.append(arg)
    if after is not None:  # keyset pagination: logs stored after the first page never shift later pages
        clauses.append("(created_at, id) < (%s, %s)")
        params += after
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {_LOG_COLUMNS} FROM logs {where} ORDER BY created_at DESC, id DESC LIMIT %s"
    rows = await (await conn.execute(sql, [*params, limit + 1])).fetchall()
    logs = await _load(conn, rows[:limit])
    if len(rows) <= limit:
        return LogPage(tuple(logs), None)
    return LogPage(tuple(logs), encode_log_cursor(rows[limit - 1][1], rows[limit - 1][0]))


async def _add_criterion_results(conn: Conn, log_id: str, slug: str, results: Mapping[int, str]) -> None:
    async with conn.transaction():
        if await (await conn.execute("SELECT 1 FROM logs WHERE id = %s", (log_id,))).fetchone() is None:
            raise LogNotFoundError(log_id)
        for index, result in results.items():  # jsonb_set re-reads a row another replica updated meanwhile
            await conn.execute(
                "UPDATE candidates SET criteria_results = jsonb_set(criteria_results, %s::text[], %s::jsonb)"
                " WHERE log_id = %s AND idx = %s",
                ([slug], result, log_id, index),
            )


async def _update_metadata(conn: Conn, log_id: str, patch: Mapping[str, str | None]) -> LogRecord:
    async with conn.transaction():
        sql = "SELECT metadata FROM logs WHERE id = %s FOR UPDATE"  # another replica's patch waits for this one
        row = await (await conn.execute(sql, (log_id,))).fetchone()
        if row is None:
            raise LogNotFoundError(log_id)
        merged: dict[str, object] = dict(row[0])
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        text = dump_json(validate_metadata(merged), "metadata")
        await conn.execute("UPDATE logs SET metadata = %s::jsonb WHERE id = %s", (text, log_id))
        return await _fetch(conn, log_id)


# ---------------------------------------------------------------- the store


class PostgresLogStore:
    """LogStore on a Postgres database (or one schema of it, via the url's search_path), through an async
    connection pool. Build it with `await PostgresLogStore.open(url)` (gateway.store.open_store does): that
    migrates the schema before the pool opens."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        pool_size: int = 10,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        params = conninfo_to_dict(url)
        # The url may carry a password: messages name only where the database is.
        self._where = f"postgres {params.get('dbname', '')!s} at {params.get('host', 'localhost')!s}"
        self._url = url
        self._busy_timeout_s = busy_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._clock = clock
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}  # writes open their own transaction
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = _CONNECT_TIMEOUT_S
        self._pool = psycopg_pool.AsyncConnectionPool(
            url, kwargs=self._connect_kwargs, min_size=1, max_size=pool_size, open=False, timeout=busy_timeout_s,
            configure=self._configure, check=psycopg_pool.AsyncConnectionPool.check_connection,
            name="rewardgate-store",
        )  # fmt: skip
        self._closed = False
        self._inflight: set[asyncio.Future[Any]] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        busy_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        pool_size: int = 10,
        clock: Callable[[], datetime] = _utcnow,
    ) -> PostgresLogStore:
        """Connect, migrate (once across replicas starting together), and open the pool."""
        store = cls(url, busy_timeout_s=busy_timeout_s, statement_timeout_s=statement_timeout_s,
                    pool_size=pool_size, clock=clock)  # fmt: skip
        try:
            await store._guard(store._migrate())
            await store._guard(store._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S))
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _migrate(self) -> None:
        # A connection of its own, with long timeouts: another replica may be in the middle of a step.
        async with await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs) as conn:
            await _set_timeouts(conn, _MIGRATE_TIMEOUT_S, _MIGRATE_TIMEOUT_S)
            await migrate(conn)

    async def _configure(self, conn: Conn) -> None:
        """Every pooled connection: UTC, and the timeouts that make a wait a StoreBusyError."""
        await _set_timeouts(conn, self._busy_timeout_s, self._statement_timeout_s)

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection. As on SQLite's worker, a call whose caller is cancelled (a client
        that went away) still runs to completion: a create still commits, so no log is lost half-way."""
        if self._closed:
            raise StoreClosedError("the log store is closed")

        async def call() -> T:
            async with self._pool.connection() as conn:
                return await fn(conn)

        task = asyncio.ensure_future(self._guard(call()))
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # marks it retrieved: the caller, if still there, gets it through the shield

    async def _guard(self, work: Awaitable[T]) -> T:
        """Await `work`, mapping psycopg's errors onto the store's tree (by class, never by message)."""
        try:
            return await work
        except psycopg_pool.PoolClosed as exc:
            raise StoreClosedError("the log store is closed") from exc
        except psycopg_pool.PoolTimeout as exc:
            raise StoreBusyError(f"{self._where}: no free connection within {self._busy_timeout_s}s") from exc
        except (errors.LockNotAvailable, errors.DeadlockDetected) as exc:
            raise StoreBusyError(f"{self._where}: the database stayed locked longer than {self._busy_timeout_s}s"
                                 f" ({exc.sqlstate})") from exc  # fmt: skip
        except errors.QueryCanceled as exc:
            raise StoreBusyError(f"{self._where}: a statement ran longer than {self._statement_timeout_s}s") from exc
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            raise InvalidInputError(f"the database rejected the write: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"{self._where}: {exc}") from exc

    async def create_log(
        self,
        *,
        model: str,
        request: Mapping[str, Any],
        candidates: Sequence[CandidateRecord],
        latencies: Latencies,
        metadata: Mapping[str, str] | None = None,
        criteria_versions: Mapping[str, str] | None = None,
        created_at: datetime | None = None,
    ) -> LogRecord:
        """Store one log with all its candidates in one transaction; the record carries the new id."""
        when = _utc(created_at if created_at is not None else self._clock(), "created_at")
        for c in candidates:
            if c.score is not None and not math.isfinite(c.score):
                raise InvalidInputError(f"candidates[{c.index}].score: must be a finite number, got {c.score}")
        log = LogRecord(
            id=new_log_id(when),
            created_at=when,
            model=model,
            request=dict(request),
            latencies=latencies,
            metadata=validate_metadata(metadata or {}),
            criteria_versions=dict(criteria_versions or {}),
            candidates=tuple(sorted(candidates, key=lambda c: (c.rank is None, c.rank or 0, c.index))),
        )
        texts = {name: dump_json(getattr(log, name), name) for name in ("request", "metadata", "criteria_versions")}
        rows = [
            (log.id, c.index, None if c.message is None else dump_json(c.message, f"candidates[{c.index}].message"),
             c.status, c.finish_reason, c.error, c.score, c.rank,
             dump_json(c.criteria_results, f"candidates[{c.index}].criteria_results"))
            for c in log.candidates
        ]  # fmt: skip
        await self._run(lambda conn: _insert(conn, log, texts, rows))
        return log

    async def get_log(self, log_id: str) -> LogRecord:
        return await self._run(lambda conn: _fetch(conn, log_id))

    async def list_logs(self, query: LogQuery | None = None, *, limit: int = 50, cursor: str | None = None) -> LogPage:
        """One page of the logs matching `query`, newest first; `cursor` is the previous page's next_cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        after = decode_log_cursor(cursor) if cursor is not None else None
        q = query or LogQuery()
        return await self._run(lambda conn: _list(conn, q, limit, after))

    async def add_criterion_results(self, log_id: str, slug: str, results: Mapping[int, Mapping[str, Any]]) -> None:
        """See LogStore.add_criterion_results."""
        texts = {index: dump_json(dict(result), f"criteria_results[{slug!r}]") for index, result in results.items()}
        await self._run(lambda conn: _add_criterion_results(conn, log_id, slug, texts))

    async def update_metadata(self, log_id: str, patch: Mapping[str, str | None]) -> LogRecord:
        """Merge `patch` into the log's metadata (a None value removes that key); validated like create_log."""
        if not isinstance(patch, Mapping):
            raise MetadataError(None, f"must be an object of strings, got {type(patch).__name__}")
        frozen = dict(patch)
        return await self._run(lambda conn: _update_metadata(conn, log_id, frozen))

    def export_jsonl(self, query: LogQuery | None = None) -> AsyncIterator[str]:
        return export_jsonl(self, query)

    def export_pairs(self, query: LogQuery | None = None) -> AsyncIterator[str]:
        return export_pairs(self, query)

    async def create_criterion(
        self, *, slug: str, kind: str, spec: Mapping[str, Any], description: str = "", new_version: bool = False
    ) -> CriterionDefinition:
        """The next version of `slug`; see LogStore.create_criterion."""
        text = dump_json(dict(spec), "spec")
        when = _utc(self._clock(), "created_at")
        return await self._run(
            lambda conn: postgres_criteria.insert_criterion(conn, slug, kind, text, description, when, new_version)
        )

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        return await self._run(lambda conn: postgres_criteria.criterion_versions(conn, slug))

    async def list_criteria(self) -> Sequence[CriterionDefinition]:
        return await self._run(postgres_criteria.list_criteria)

    async def set_alignment(self, slug: str, version: int, report: Mapping[str, Any]) -> CriterionDefinition:
        """Attach an alignment report to one version (the latest report replaces an earlier one)."""
        text = dump_json(dict(report), "alignment")
        return await self._run(lambda conn: postgres_criteria.set_alignment(conn, slug, version, text))

    async def create_dataset(self, *, name: str, description: str = "", exist_ok: bool = False) -> DatasetRecord:
        when = _utc(self._clock(), "created_at")
        dataset_id = new_id("ds", when)
        return await self._run(
            lambda conn: postgres_datasets.create_dataset(conn, dataset_id, name, description, when, exist_ok)
        )

    async def get_dataset(self, dataset: str) -> DatasetRecord:
        return await self._run(lambda conn: postgres_datasets.get_dataset(conn, dataset))

    async def list_datasets(self) -> Sequence[DatasetRecord]:
        return await self._run(postgres_datasets.list_datasets)

    async def delete_dataset(self, dataset: str) -> str:
        return await self._run(lambda conn: postgres_datasets.delete_dataset(conn, dataset))

    async def add_entries(self, dataset: str, entries: Sequence[NewEntry]) -> AddedEntries:
        """See LogStore.add_entries; every entry's pair must carry a TRAIN or TEST split."""
        when = _utc(self._clock(), "created_at")
        rows: list[postgres_datasets.EntryRow] = []
        for i, entry in enumerate(entries):
            split = entry.pair.get("split")
            if split not in SPLITS or entry.source not in ("upload", "log", "feedback"):
                raise InvalidInputError(f"entries[{i}]: split {split!r} / source {entry.source!r} not allowed")
            pair = dump_json(dict(entry.pair), f"entries[{i}].pair")
            rows.append((new_id("dse", when), str(split), entry.source, entry.source_ref, pair))
        return await self._run(lambda conn: postgres_datasets.add_entries(conn, dataset, rows, when))

    async def list_entries(
        self, dataset: str, *, limit: int = 50, cursor: str | None = None, split: str | None = None
    ) -> EntryPage:
        """One page of the dataset's entries in insertion order, optionally of one split."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if split is not None and split not in SPLITS:
            raise InvalidInputError(f"split must be TRAIN or TEST, got {split!r}")
        after = decode_entry_cursor(cursor) if cursor is not None else 0
        return await self._run(lambda conn: postgres_datasets.list_entries(conn, dataset, limit, after, split))

    async def delete_entry(self, dataset: str, entry_id: str) -> None:
        await self._run(lambda conn: postgres_datasets.delete_entry(conn, dataset, entry_id))

    async def create_job(self, job: JobRecord) -> JobRecord:
        await self._run(lambda conn: postgres_jobs.insert_job(conn, job))
        return job

    async def get_job(self, job_id: str) -> JobRecord:
        return await self._run(lambda conn: postgres_jobs.fetch_job(conn, job_id))

    async def list_jobs(self, *, limit: int = 100) -> Sequence[JobRecord]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        return await self._run(lambda conn: postgres_jobs.list_jobs(conn, limit))

    async def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = sorted(set(changes) - set(JOB_FIELDS))
        if unknown:
            raise InvalidInputError(f"not a job field: {unknown[0]!r}")
        when = _utc(self._clock(), "updated_at")
        return await self._run(lambda conn: postgres_jobs.update_job(conn, job_id, changes, when))

    async def aclose(self) -> None:
        """Close the pool's connections; calls already running finish first. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._pool.close()


async def _set_timeouts(conn: Conn, lock_timeout_s: float, statement_timeout_s: float) -> None:
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false),"
        " set_config('TimeZone', 'UTC', false)",
        (f"{max(1, round(lock_timeout_s * 1000))}ms", f"{max(1, round(statement_timeout_s * 1000))}ms"),
    )
