"""The Postgres dialect, for several gateway replicas on one database: the store's SQL, and what Postgres needs
around it: psycopg 3's async connection pool, timeouts, advisory locks, the schema migrations, and the mapping of
psycopg's errors onto the store's tree (by class and SQLSTATE). Imports psycopg, psycopg_pool, the stdlib,
gateway.protocol and gateway.store's records, errors, rows, dialect and migrations modules; open_store imports it
only for a postgresql:// url, so SQLite users need no psycopg. Over 300 lines for the reason sqlite.py gives.

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
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from gateway.protocol import CriterionDefinition
from gateway.store.dialect import CandidateRow, EntryRow, JobRow, LogFilter, LogRow, MetadataMerge, VersionRule
from gateway.store.errors import (
    CriterionNotFoundError,
    DatasetNotFoundError,
    EntryNotFoundError,
    InvalidInputError,
    JobNotFoundError,
    LogNotFoundError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
)
from gateway.store.migrations import POSTGRES_MIGRATIONS, checked_version
from gateway.store.records import JOB_JSON_FIELDS, DatasetRecord, EntryRecord, JobRecord, LogRecord
from gateway.store.rows import (
    CANDIDATE_COLUMNS,
    CANDIDATE_ORDER,
    CRITERION_COLUMNS,
    DATASET_SELECT,
    ENTRY_COLUMNS,
    JOB_COLUMNS,
    LOG_COLUMNS,
    RowReader,
)

Conn = psycopg.AsyncConnection[Any]
P = ParamSpec("P")
T = TypeVar("T")

_CONNECT_TIMEOUT_S = 10  # opening one connection (libpq connect_timeout), and the pool's first one
_MIGRATE_TIMEOUT_S = 300  # how long a replica waits for another replica's migration step (and runs its own)
_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS rewardgate_schema (version INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
# One lock per schema (several rewardgate schemas may share a database); NULL would silently lock nothing.
_MIGRATION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('rewardgate.migrate'), hashtext(coalesce(current_schema(), '')))"
)
# Per slug; the schema is part of the key for the same reason.
_CRITERION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('rewardgate.criteria.' || coalesce(current_schema(), '')), hashtext(%s))"
)
# By id or name; an id match wins should a name ever equal another dataset's id.
_RESOLVE = "SELECT id FROM datasets WHERE id = %s OR name = %s ORDER BY id = %s DESC LIMIT 1"


def _as_is(value: Any) -> Any:
    return value  # psycopg decodes JSONB itself


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_READ = RowReader(json=_as_is, time=_utc)


async def _set_timeouts(conn: Conn, lock_timeout_s: float, statement_timeout_s: float) -> None:
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false),"
        " set_config('TimeZone', 'UTC', false)",
        (f"{max(1, round(lock_timeout_s * 1000))}ms", f"{max(1, round(statement_timeout_s * 1000))}ms"),
    )


async def _migrate(conn: Conn) -> None:
    """Apply the pending POSTGRES_MIGRATIONS, each in one transaction with its version row, under a
    transaction-scoped advisory lock: replicas starting together wait for the first one's step, re-read the
    version and apply nothing twice. Postgres DDL is transactional, so a failed step leaves the schema as it was."""
    while True:
        async with conn.transaction():
            await conn.execute(_MIGRATION_LOCK)
            await conn.execute(_VERSION_TABLE)
            row = await (await conn.execute("SELECT coalesce(max(version), 0) FROM rewardgate_schema")).fetchone()
            version = checked_version(int(row[0]) if row is not None else 0, POSTGRES_MIGRATIONS)
            if version == len(POSTGRES_MIGRATIONS):
                return
            for statement in POSTGRES_MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO rewardgate_schema (version) VALUES (%s)", (version + 1,))


# ---------------------------------------------------------------- helpers of several statements


async def _rows(conn: Conn, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return await (await conn.execute(sql, params)).fetchall()


async def _logs(conn: Conn, rows: list[Any]) -> list[LogRecord]:
    """LogRecords for rows of LOG_COLUMNS, with their candidates fetched in one query."""
    sql = f"SELECT {CANDIDATE_COLUMNS} FROM candidates WHERE log_id = ANY(%s) ORDER BY {CANDIDATE_ORDER}"
    return _READ.logs(rows, await _rows(conn, sql, ([row[0] for row in rows],)) if rows else [])


async def _log(conn: Conn, log_id: str) -> LogRecord:
    rows = await _rows(conn, f"SELECT {LOG_COLUMNS} FROM logs WHERE id = %s", (log_id,))
    if not rows:
        raise LogNotFoundError(log_id)
    return (await _logs(conn, rows))[0]


async def _versions(conn: Conn, slug: str) -> list[CriterionDefinition]:
    sql = f"SELECT {CRITERION_COLUMNS} FROM criteria WHERE slug = %s ORDER BY version"
    return _READ.criteria(await _rows(conn, sql, (slug,)))


async def _resolve(conn: Conn, ref: str, *, lock: bool = False) -> str:
    """The id of the dataset `ref` names; lock=True (in a transaction) holds its row until the commit."""
    row = await (await conn.execute(_RESOLVE + (" FOR UPDATE" if lock else ""), (ref, ref, ref))).fetchone()
    if row is None:
        raise DatasetNotFoundError(ref)
    return str(row[0])


async def _dataset(conn: Conn, dataset_id: str) -> DatasetRecord:
    row = await (await conn.execute(f"{DATASET_SELECT} WHERE d.id = %s", (dataset_id,))).fetchone()
    if row is None:
        raise DatasetNotFoundError(dataset_id)
    return _READ.dataset(row)


def _found_job(rows: list[Any], job_id: str) -> JobRecord:
    if not rows:
        raise JobNotFoundError(job_id)
    return _READ.job(rows[0])


def pooled(
    method: Callable[Concatenate[PostgresDialect, Conn, P], Awaitable[T]],
) -> Callable[Concatenate[PostgresDialect, P], Coroutine[Any, Any, T]]:
    """A method of SQL on one connection as the async Dialect method: run on a pooled connection."""

    @functools.wraps(method)
    async def call(self: PostgresDialect, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(lambda conn: method(self, conn, *args, **kwargs))

    return call


class PostgresDialect:
    """The Dialect on a Postgres database (or one schema of it, via the url's search_path), through an async
    connection pool. Build it with `await PostgresDialect.open(url)`: that migrates the schema before the pool
    opens."""

    def __init__(
        self, url: str, *, busy_timeout_s: float = 5.0, statement_timeout_s: float = 30.0, pool_size: int = 10
    ) -> None:
        params = conninfo_to_dict(url)
        # The url may carry a password: messages name only where the database is.
        self._where = f"postgres {params.get('dbname', '')!s} at {params.get('host', 'localhost')!s}"
        self._url = url
        self._busy_timeout_s = busy_timeout_s
        self._statement_timeout_s = statement_timeout_s
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
        cls, url: str, *, busy_timeout_s: float = 5.0, statement_timeout_s: float = 30.0, pool_size: int = 10
    ) -> PostgresDialect:
        """Connect, migrate (once across replicas starting together), and open the pool."""
        dialect = cls(url, busy_timeout_s=busy_timeout_s, statement_timeout_s=statement_timeout_s, pool_size=pool_size)
        try:
            await dialect._guard(dialect._migrate())
            await dialect._guard(dialect._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S))
        except BaseException:
            await dialect.aclose()
            raise
        return dialect

    async def _migrate(self) -> None:
        # A connection of its own, with long timeouts: another replica may be in the middle of a step.
        async with await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs) as conn:
            await _set_timeouts(conn, _MIGRATE_TIMEOUT_S, _MIGRATE_TIMEOUT_S)
            await _migrate(conn)

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

    async def aclose(self) -> None:
        """Close the pool's connections; calls already running finish first. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._pool.close()

    # ---------------------------------------------------------------- logs

    @pooled
    async def insert_log(
        self, conn: Conn, log: LogRow, metadata: Mapping[str, str], candidates: Sequence[CandidateRow]
    ) -> None:
        # `metadata` is in log.metadata already: the JSONB column is what the metadata filter reads.
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO logs ({LOG_COLUMNS})"
                " VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s::jsonb)",
                log,
            )
            if candidates:
                async with conn.cursor() as cur:  # pipelined: one round trip for all of them
                    await cur.executemany(
                        f"INSERT INTO candidates ({CANDIDATE_COLUMNS})"
                        " VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s::jsonb)",
                        [(log.id, *c) for c in candidates],
                    )

    @pooled
    async def get_log(self, conn: Conn, log_id: str) -> LogRecord:
        return await _log(conn, log_id)

    @pooled
    async def list_logs(self, conn: Conn, where: LogFilter, limit: int) -> list[LogRecord]:
        clauses: list[str] = []
        params: list[object] = []
        if where.metadata:  # containment of {k: v, ...}: every pair must match (GIN index)
            clauses.append("metadata @> %s::jsonb")
            params.append(where.metadata_json)
        for clause, arg in {"model = %s": where.model, "completion_id = %s": where.completion_id,
                            "created_at >= %s": where.since, "created_at < %s": where.before}.items():  # fmt: skip
            if arg is not None:
                clauses.append(clause)
                params.append(arg)
        if where.after is not None:  # keyset pagination: logs stored after the first page never shift later pages
            clauses.append("(created_at, id) < (%s, %s)")
            params += where.after
        sql = f"SELECT {LOG_COLUMNS} FROM logs {'WHERE ' if clauses else ''}{' AND '.join(clauses)}"
        return await _logs(
            conn, await _rows(conn, f"{sql} ORDER BY created_at DESC, id DESC LIMIT %s", [*params, limit])
        )

    @pooled
    async def update_metadata(self, conn: Conn, log_id: str, merge: MetadataMerge) -> LogRecord:
        async with conn.transaction():
            sql = "SELECT metadata FROM logs WHERE id = %s FOR UPDATE"  # another replica's patch waits for this one
            row = await (await conn.execute(sql, (log_id,))).fetchone()
            if row is None:
                raise LogNotFoundError(log_id)
            _, text = merge(row[0])
            await conn.execute("UPDATE logs SET metadata = %s::jsonb WHERE id = %s", (text, log_id))
            return await _log(conn, log_id)

    @pooled
    async def set_criterion_results(self, conn: Conn, log_id: str, slug: str, results: Mapping[int, str]) -> None:
        async with conn.transaction():
            if await (await conn.execute("SELECT 1 FROM logs WHERE id = %s", (log_id,))).fetchone() is None:
                raise LogNotFoundError(log_id)
            for index, result in results.items():  # jsonb_set re-reads a row another replica updated meanwhile
                await conn.execute(
                    "UPDATE candidates SET criteria_results = jsonb_set(criteria_results, %s::text[], %s::jsonb)"
                    " WHERE log_id = %s AND idx = %s",
                    ([slug], result, log_id, index),
                )

    # ---------------------------------------------------------------- the response cache

    @pooled
    async def get_cached(self, conn: Conn, key: str, now: datetime) -> str | None:
        rows = await _rows(conn, "SELECT value FROM response_cache WHERE key = %s AND expires_at > %s", (key, now))
        return str(rows[0][0]) if rows else None

    @pooled
    async def put_cached(
        self, conn: Conn, key: str, value: str, created_at: datetime, expires_at: datetime, max_entries: int
    ) -> None:
        async with conn.transaction():  # replicas writing one key at once: the last write wins, never an error
            await conn.execute("INSERT INTO response_cache (key, created_at, expires_at, value) VALUES (%s, %s, %s, %s)"
                               " ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at,"
                               " expires_at = excluded.expires_at, value = excluded.value",
                               (key, created_at, expires_at, value))  # fmt: skip
            await conn.execute("DELETE FROM response_cache WHERE expires_at <= %s", (created_at,))
            await conn.execute("DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache"
                               " ORDER BY created_at DESC, key DESC OFFSET %s)", (max_entries,))  # fmt: skip

    # ---------------------------------------------------------------- criterion definitions

    @pooled
    async def insert_criterion(
        self, conn: Conn, slug: str, kind: str, spec: str, description: str, created_at: datetime, version: VersionRule
    ) -> CriterionDefinition:
        # Under the slug's advisory lock: two replicas adding versions at once get distinct, consecutive numbers,
        # and two creating one new slug make one v1.
        async with conn.transaction():
            await conn.execute(_CRITERION_LOCK, (slug,))
            number = version(await _versions(conn, slug))
            sql = (f"INSERT INTO criteria ({CRITERION_COLUMNS}) VALUES (%s, %s, %s, %s::jsonb, %s, %s, NULL)"
                   f" RETURNING {CRITERION_COLUMNS}")  # fmt: skip
            return _READ.criteria(await _rows(conn, sql, (slug, number, kind, spec, description, created_at)))[0]

    @pooled
    async def criterion_versions(self, conn: Conn, slug: str) -> list[CriterionDefinition]:
        return await _versions(conn, slug)

    @pooled
    async def list_criteria(self, conn: Conn) -> list[CriterionDefinition]:
        return _READ.criteria(await _rows(conn, f"SELECT {CRITERION_COLUMNS} FROM criteria ORDER BY slug, version"))

    @pooled
    async def set_alignment(self, conn: Conn, slug: str, version: int, report: str) -> CriterionDefinition:
        sql = (f"UPDATE criteria SET alignment = %s::jsonb WHERE slug = %s AND version = %s"
               f" RETURNING {CRITERION_COLUMNS}")  # fmt: skip
        rows = await _rows(conn, sql, (report, slug, version))
        if not rows:
            raise CriterionNotFoundError(f"{slug}@v{version}")
        return _READ.criteria(rows)[0]

    # ---------------------------------------------------------------- datasets
    # Entries keep insertion order through an identity `seq`. insert_entries locks the dataset's row first, so
    # concurrent inserts into one dataset (from any replica) take their seqs one transaction after the other, in
    # commit order: a reader's cursor never passes an entry that commits later with a smaller seq.

    @pooled
    async def create_dataset(
        self, conn: Conn, dataset_id: str, name: str, description: str, created_at: datetime
    ) -> DatasetRecord | None:
        # The unique name decides between replicas racing to create it: exactly one INSERT returns a row.
        sql = ("INSERT INTO datasets (id, name, description, created_at) VALUES (%s, %s, %s, %s)"
               " ON CONFLICT (name) DO NOTHING RETURNING id")  # fmt: skip
        inserted = await _rows(conn, sql, (dataset_id, name, description, created_at))
        return await _dataset(conn, dataset_id) if inserted else None

    @pooled
    async def get_dataset(self, conn: Conn, ref: str) -> DatasetRecord:
        sql = f"{DATASET_SELECT} WHERE d.id = %s OR d.name = %s ORDER BY d.id = %s DESC LIMIT 1"
        rows = await _rows(conn, sql, (ref, ref, ref))
        if not rows:
            raise DatasetNotFoundError(ref)
        return _READ.dataset(rows[0])

    @pooled
    async def list_datasets(self, conn: Conn) -> list[DatasetRecord]:
        return [_READ.dataset(r) for r in await _rows(conn, f"{DATASET_SELECT} ORDER BY d.created_at DESC, d.seq DESC")]

    @pooled
    async def delete_dataset(self, conn: Conn, ref: str) -> str:
        async with conn.transaction():
            dataset_id = await _resolve(conn, ref, lock=True)
            await conn.execute("DELETE FROM datasets WHERE id = %s", (dataset_id,))  # entries go by ON DELETE CASCADE
        return dataset_id

    @pooled
    async def insert_entries(
        self, conn: Conn, ref: str, entries: Sequence[EntryRow], created_at: datetime
    ) -> tuple[DatasetRecord, tuple[str, ...]]:
        duplicates: list[str] = []
        sql = (
            "INSERT INTO dataset_entries (id, dataset_id, created_at, split, source, source_ref, pair)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT (dataset_id, source_ref) WHERE source = 'log' DO NOTHING RETURNING seq"
        )
        async with conn.transaction():
            dataset_id = await _resolve(conn, ref, lock=True)
            if entries:
                params = [(e.id, dataset_id, created_at, e.split, e.source, e.source_ref, e.pair) for e in entries]
                async with conn.cursor() as cur:
                    await cur.executemany(sql, params, returning=True)  # pipelined: one round trip, a result per row
                    for e in entries:
                        if await cur.fetchone() is None and e.source_ref is not None:
                            duplicates.append(e.source_ref)
                        cur.nextset()
            dataset = await _dataset(conn, dataset_id)
        return dataset, tuple(duplicates)

    @pooled
    async def list_entries(
        self, conn: Conn, ref: str, after: int, split: str | None, limit: int
    ) -> list[tuple[int, EntryRecord]]:
        dataset_id = await _resolve(conn, ref)
        where = "dataset_id = %s AND seq > %s" + (" AND split = %s" if split is not None else "")
        params: list[object] = [dataset_id, after, *([split] if split is not None else []), limit]
        sql = f"SELECT {ENTRY_COLUMNS} FROM dataset_entries WHERE {where} ORDER BY seq LIMIT %s"
        return [_READ.entry(r) for r in await _rows(conn, sql, params)]

    @pooled
    async def delete_entry(self, conn: Conn, ref: str, entry_id: str) -> None:
        dataset_id = await _resolve(conn, ref)
        cur = await conn.execute(
            "DELETE FROM dataset_entries WHERE id = %s AND dataset_id = %s", (entry_id, dataset_id)
        )
        if cur.rowcount == 0:
            raise EntryNotFoundError(entry_id)

    # ---------------------------------------------------------------- training jobs

    @pooled
    async def insert_job(self, conn: Conn, job: JobRow) -> None:
        json_columns = {JobRow._fields.index(name) for name in ("hyperparameters", *JOB_JSON_FIELDS)}
        marks = ", ".join("%s::jsonb" if i in json_columns else "%s" for i in range(len(job)))
        await conn.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks})", job)

    @pooled
    async def get_job(self, conn: Conn, job_id: str) -> JobRecord:
        return _found_job(await _rows(conn, f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)), job_id)

    @pooled
    async def list_jobs(self, conn: Conn, limit: int) -> list[JobRecord]:
        rows = await _rows(conn, f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT %s", (limit,))
        return [_READ.job(r) for r in rows]

    @pooled
    async def update_job(self, conn: Conn, job_id: str, changes: Mapping[str, Any], updated_at: datetime) -> JobRecord:
        assignments = ", ".join(
            [
                *(f"{name} = %s::jsonb" if name in JOB_JSON_FIELDS else f"{name} = %s" for name in changes),
                "updated_at = %s",
            ]
        )
        sql = f"UPDATE jobs SET {assignments} WHERE id = %s RETURNING {JOB_COLUMNS}"
        return _found_job(await _rows(conn, sql, (*changes.values(), updated_at, job_id)), job_id)

    @pooled
    async def delete_jobs(self, conn: Conn, slug: str) -> int:
        return (await conn.execute("DELETE FROM jobs WHERE slug = %s", (slug,))).rowcount
