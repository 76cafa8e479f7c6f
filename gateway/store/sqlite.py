"""The SQLite dialect: the store's SQL for one SQLite file, and what SQLite needs around it: ONE worker thread that
owns the connection (so the event loop never blocks), WAL mode, the busy timeout, the schema migrations, and the
mapping of sqlite3's errors onto the store's tree (by class and error code). Imports only the stdlib,
gateway.protocol and gateway.store's records, errors, rows, dialect and migrations modules.

Every write is one transaction that takes the write lock up front (write_transaction). Times are stored as
fixed-width UTC text (records.TIME_FORMAT), which sorts as the times do. Over 300 lines because it is every table's
SQL plus the worker that runs it; split in two, each half would need the other's private helpers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

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
from gateway.store.migrations import SQLITE_MIGRATIONS, checked_version
from gateway.store.records import DatasetRecord, EntryRecord, JobRecord, LogRecord, format_time, parse_time
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

P = ParamSpec("P")
T = TypeVar("T")


def _load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_READ = RowReader(json=_load_json, time=parse_time)


# ---------------------------------------------------------------- the connection, on the worker thread only


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Committed when the block ends, rolled back if it raises: nothing is ever half-stored. It takes the
    write lock up front (IMMEDIATE), so waiting for it is the busy handler's job, never a deadlock.
    Reads need no transaction: a log and its candidates are written once, together, and later only the
    metadata changes, which lives in the log's own row."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _is_busy(exc: sqlite3.Error) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _schema_version(db: sqlite3.Connection) -> int:
    return checked_version(int(db.execute("PRAGMA user_version").fetchone()[0]), SQLITE_MIGRATIONS)


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the pending SQLITE_MIGRATIONS, each in one transaction with its user_version bump: idempotent, and
    safe when another process migrates at the same time (the version is re-read under the write lock)."""
    while _schema_version(db) < len(SQLITE_MIGRATIONS):
        with write_transaction(db):
            version = _schema_version(db)
            if version < len(SQLITE_MIGRATIONS):
                for statement in SQLITE_MIGRATIONS[version]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")


def _enable_wal(db: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switching a new file to WAL answers SQLITE_BUSY at once, without the busy handler, while another
    connection (a replica starting at the same moment) does the same: retry until the busy timeout."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)  # on the store's worker thread, never the event loop


def _connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    # timeout= is SQLite's busy_timeout; isolation_level=None: write_transaction issues BEGIN/COMMIT itself.
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        _enable_wal(db, busy_timeout_s)  # readers never wait for the writer
        db.execute("PRAGMA synchronous = NORMAL")  # with WAL: never corrupt; a power cut may lose the last commits
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


# ---------------------------------------------------------------- helpers of several statements


def _text_times(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with its datetimes as fixed-width UTC text: SQLite has no time type."""
    return tuple(format_time(v) if isinstance(v, datetime) else v for v in row)


def _logs(db: sqlite3.Connection, rows: list[Any]) -> list[LogRecord]:
    """LogRecords for rows of LOG_COLUMNS, with their candidates fetched in one query."""
    marks = ", ".join("?" * len(rows))
    sql = f"SELECT {CANDIDATE_COLUMNS} FROM candidates WHERE log_id IN ({marks}) ORDER BY {CANDIDATE_ORDER}"
    return _READ.logs(rows, db.execute(sql, [row[0] for row in rows]).fetchall() if rows else [])


def _log(db: sqlite3.Connection, log_id: str) -> LogRecord:
    rows = db.execute(f"SELECT {LOG_COLUMNS} FROM logs WHERE id = ?", (log_id,)).fetchall()
    if not rows:
        raise LogNotFoundError(log_id)
    return _logs(db, rows)[0]


def _versions(db: sqlite3.Connection, slug: str) -> list[CriterionDefinition]:
    sql = f"SELECT {CRITERION_COLUMNS} FROM criteria WHERE slug = ? ORDER BY version"
    return _READ.criteria(db.execute(sql, (slug,)).fetchall())


def _version(db: sqlite3.Connection, slug: str, version: int) -> CriterionDefinition:
    # That version, not the newest: another store may have added one since this call's commit.
    return next(d for d in _versions(db, slug) if d.version == version)


def _dataset(db: sqlite3.Connection, ref: str) -> DatasetRecord:
    """By id or name; an id match wins should a name ever equal another dataset's id."""
    sql = f"{DATASET_SELECT} WHERE d.id = ? OR d.name = ? ORDER BY d.id = ? DESC LIMIT 1"
    row = db.execute(sql, (ref, ref, ref)).fetchone()
    if row is None:
        raise DatasetNotFoundError(ref)
    return _READ.dataset(row)


def _job(db: sqlite3.Connection, job_id: str) -> JobRecord:
    row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFoundError(job_id)
    return _READ.job(row)


def _write_metadata(db: sqlite3.Connection, log_id: str, metadata: Mapping[str, str]) -> None:
    """The log's metadata rows (log_metadata), which the metadata filter reads through its index."""
    db.execute("DELETE FROM log_metadata WHERE log_id = ?", (log_id,))
    db.executemany("INSERT INTO log_metadata VALUES (?, ?, ?)", [(log_id, k, v) for k, v in metadata.items()])


def on_worker(
    method: Callable[Concatenate[SqliteDialect, sqlite3.Connection, P], T],
) -> Callable[Concatenate[SqliteDialect, P], Coroutine[Any, Any, T]]:
    """A method of SQL on the connection as the async Dialect method: queued to the worker thread, run there."""

    @functools.wraps(method)
    async def queued(self: SqliteDialect, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(lambda db: method(self, db, *args, **kwargs))

    return queued


class SqliteDialect:
    """The Dialect on one SQLite file (WAL). One worker thread owns the connection; every call queues to it.
    `busy_timeout_s` bounds each call from when it was queued.

    A call cancelled while it waits still runs to completion on the worker once the worker has picked it up
    (a create may still commit); one cancelled before that is dropped by the executor.
    """

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardgate-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str, *, busy_timeout_s: float = 5.0) -> SqliteDialect:
        """Connect and migrate now, so a bad path fails here rather than at the first call."""
        dialect = cls(path, busy_timeout_s=busy_timeout_s)
        try:
            await dialect._run(lambda db: None)
        except BaseException:
            await dialect.aclose()
            raise
        return dialect

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreClosedError("the log store is closed")
        deadline = time.monotonic() + self._busy_timeout_s
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._on_worker, fn, deadline)

    def _on_worker(self, fn: Callable[[sqlite3.Connection], T], deadline: float) -> T:
        """On the worker thread: open the connection on first use, map sqlite3 errors onto the tree.

        `busy_timeout_s` bounds a call from when it was queued, not from when the worker reaches it: while
        another connection holds the lock, calls queued behind a waiting one get only what is left of their
        own budget, so all of them answer within about busy_timeout_s instead of one timeout after another."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise StoreBusyError(f"{self._path}: waited longer than {self._busy_timeout_s}s for the database")
        try:
            if self._conn is None:
                self._conn = _connect(self._path, left)
            self._conn.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
            return fn(self._conn)
        except sqlite3.IntegrityError as exc:
            raise InvalidInputError(f"the database rejected the write: {exc}") from exc
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise StoreBusyError(
                    f"{self._path}: the database stayed locked longer than {self._busy_timeout_s}s"
                ) from exc
            raise StoreError(f"{self._path}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread; calls already queued finish first."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_on_worker)
        self._executor.shutdown(wait=True)

    def _close_on_worker(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- logs

    @on_worker
    def insert_log(
        self, db: sqlite3.Connection, log: LogRow, metadata: Mapping[str, str], candidates: Sequence[CandidateRow]
    ) -> None:
        with write_transaction(db):
            db.execute(f"INSERT INTO logs ({LOG_COLUMNS}) VALUES ({', '.join('?' * len(log))})", _text_times(log))
            _write_metadata(db, log.id, metadata)
            db.executemany(f"INSERT INTO candidates ({CANDIDATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(log.id, *c) for c in candidates])  # fmt: skip

    @on_worker
    def get_log(self, db: sqlite3.Connection, log_id: str) -> LogRecord:
        return _log(db, log_id)

    @on_worker
    def list_logs(self, db: sqlite3.Connection, where: LogFilter, limit: int) -> list[LogRecord]:
        clauses: list[str] = []
        params: list[object] = []
        for key, value in where.metadata.items():  # indexed rows (log_metadata), no JSON scan
            clauses.append(
                "EXISTS (SELECT 1 FROM log_metadata m WHERE m.log_id = logs.id AND m.key = ? AND m.value = ?)"
            )
            params += [key, value]
        since, before = (None if t is None else format_time(t) for t in (where.since, where.before))
        conditions = {"model = ?": where.model, "completion_id = ?": where.completion_id, "created_at >= ?": since,
                      "created_at < ?": before}  # fmt: skip
        for clause, arg in conditions.items():
            if arg is not None:
                clauses.append(clause)
                params.append(arg)
        if where.after is not None:  # keyset pagination: logs stored after the first page never shift later pages
            clauses.append("(created_at, id) < (?, ?)")
            params += [format_time(where.after[0]), where.after[1]]
        sql = f"SELECT {LOG_COLUMNS} FROM logs {'WHERE ' if clauses else ''}{' AND '.join(clauses)}"
        return _logs(db, db.execute(f"{sql} ORDER BY created_at DESC, id DESC LIMIT ?", [*params, limit]).fetchall())

    @on_worker
    def update_metadata(self, db: sqlite3.Connection, log_id: str, merge: MetadataMerge) -> LogRecord:
        with write_transaction(db):  # the write lock keeps other writers out between the read and the write
            row = db.execute("SELECT metadata FROM logs WHERE id = ?", (log_id,)).fetchone()
            if row is None:
                raise LogNotFoundError(log_id)
            metadata, text = merge(json.loads(row[0]))
            db.execute("UPDATE logs SET metadata = ? WHERE id = ?", (text, log_id))
            _write_metadata(db, log_id, metadata)
            return _log(db, log_id)

    @on_worker
    def set_criterion_results(self, db: sqlite3.Connection, log_id: str, slug: str, results: Mapping[int, str]) -> None:
        with write_transaction(db):
            if db.execute("SELECT 1 FROM logs WHERE id = ?", (log_id,)).fetchone() is None:
                raise LogNotFoundError(log_id)
            db.executemany(
                "UPDATE candidates SET criteria_results = json_set(criteria_results, ?, json(?))"
                " WHERE log_id = ? AND idx = ?",
                [(f'$."{slug}"', result, log_id, index) for index, result in results.items()],
            )

    # ---------------------------------------------------------------- the response cache

    @on_worker
    def get_cached(self, db: sqlite3.Connection, key: str, now: datetime) -> str | None:
        row = db.execute(
            "SELECT value FROM response_cache WHERE key = ? AND expires_at > ?", (key, format_time(now))
        ).fetchone()
        return None if row is None else str(row[0])

    @on_worker
    def put_cached(
        self, db: sqlite3.Connection, key: str, value: str, created_at: datetime, expires_at: datetime,
        max_entries: int,
    ) -> None:  # fmt: skip
        now = format_time(created_at)
        with write_transaction(db):
            db.execute("INSERT INTO response_cache (key, created_at, expires_at, value) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at,"
                       " expires_at = excluded.expires_at, value = excluded.value",
                       (key, now, format_time(expires_at), value))  # fmt: skip
            db.execute("DELETE FROM response_cache WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache"
                       " ORDER BY created_at DESC, key DESC LIMIT -1 OFFSET ?)", (max_entries,))  # fmt: skip

    # ---------------------------------------------------------------- criterion definitions

    @on_worker
    def insert_criterion(
        self, db: sqlite3.Connection, slug: str, kind: str, spec: str, description: str, created_at: datetime,
        version: VersionRule,
    ) -> CriterionDefinition:  # fmt: skip
        with write_transaction(db):  # the version number is read and taken under the write lock
            number = version(_versions(db, slug))
            db.execute(f"INSERT INTO criteria ({CRITERION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                       (slug, number, kind, spec, description, format_time(created_at)))  # fmt: skip
        return _version(db, slug, number)

    @on_worker
    def criterion_versions(self, db: sqlite3.Connection, slug: str) -> list[CriterionDefinition]:
        return _versions(db, slug)

    @on_worker
    def list_criteria(self, db: sqlite3.Connection) -> list[CriterionDefinition]:
        return _READ.criteria(db.execute(f"SELECT {CRITERION_COLUMNS} FROM criteria ORDER BY slug, version").fetchall())

    @on_worker
    def set_alignment(self, db: sqlite3.Connection, slug: str, version: int, report: str) -> CriterionDefinition:
        with write_transaction(db):
            sql = "UPDATE criteria SET alignment = ? WHERE slug = ? AND version = ?"
            if db.execute(sql, (report, slug, version)).rowcount == 0:
                raise CriterionNotFoundError(f"{slug}@v{version}")
        return _version(db, slug, version)

    # ---------------------------------------------------------------- datasets (entries keep order by seq)

    @on_worker
    def create_dataset(
        self, db: sqlite3.Connection, dataset_id: str, name: str, description: str, created_at: datetime
    ) -> DatasetRecord | None:
        with write_transaction(db):  # the name is checked and taken under the write lock
            if db.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone() is not None:
                return None
            sql = "INSERT INTO datasets (id, name, description, created_at) VALUES (?, ?, ?, ?)"
            db.execute(sql, (dataset_id, name, description, format_time(created_at)))
        return _dataset(db, dataset_id)

    @on_worker
    def get_dataset(self, db: sqlite3.Connection, ref: str) -> DatasetRecord:
        return _dataset(db, ref)

    @on_worker
    def list_datasets(self, db: sqlite3.Connection) -> list[DatasetRecord]:
        return [_READ.dataset(r) for r in db.execute(f"{DATASET_SELECT} ORDER BY d.created_at DESC, d.rowid DESC")]

    @on_worker
    def delete_dataset(self, db: sqlite3.Connection, ref: str) -> str:
        with write_transaction(db):
            dataset_id = _dataset(db, ref).id
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))  # entries go by ON DELETE CASCADE
        return dataset_id

    @on_worker
    def insert_entries(
        self, db: sqlite3.Connection, ref: str, entries: Sequence[EntryRow], created_at: datetime
    ) -> tuple[DatasetRecord, tuple[str, ...]]:
        duplicates: list[str] = []
        sql = (
            "INSERT INTO dataset_entries (id, dataset_id, created_at, split, source, source_ref, pair)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset_id, source_ref) WHERE source = 'log' DO NOTHING"
        )
        with write_transaction(db):
            dataset_id = _dataset(db, ref).id
            for e in entries:
                inserted = db.execute(sql, (e.id, dataset_id, format_time(created_at), e.split, e.source,
                                            e.source_ref, e.pair))  # fmt: skip
                if inserted.rowcount == 0 and e.source_ref is not None:
                    duplicates.append(e.source_ref)
        return _dataset(db, dataset_id), tuple(duplicates)

    @on_worker
    def list_entries(
        self, db: sqlite3.Connection, ref: str, after: int, split: str | None, limit: int
    ) -> list[tuple[int, EntryRecord]]:
        dataset_id = _dataset(db, ref).id
        where = "dataset_id = ? AND seq > ?" + (" AND split = ?" if split is not None else "")
        params: list[object] = [dataset_id, after, *([split] if split is not None else []), limit]
        rows = db.execute(f"SELECT {ENTRY_COLUMNS} FROM dataset_entries WHERE {where} ORDER BY seq LIMIT ?", params)
        return [_READ.entry(r) for r in rows]

    @on_worker
    def delete_entry(self, db: sqlite3.Connection, ref: str, entry_id: str) -> None:
        with write_transaction(db):
            dataset_id = _dataset(db, ref).id
            deleted = db.execute("DELETE FROM dataset_entries WHERE id = ? AND dataset_id = ?", (entry_id, dataset_id))
            if deleted.rowcount == 0:
                raise EntryNotFoundError(entry_id)

    # ---------------------------------------------------------------- training jobs

    @on_worker
    def insert_job(self, db: sqlite3.Connection, job: JobRow) -> None:
        with write_transaction(db):
            db.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * len(job))})", _text_times(job))

    @on_worker
    def get_job(self, db: sqlite3.Connection, job_id: str) -> JobRecord:
        return _job(db, job_id)

    @on_worker
    def list_jobs(self, db: sqlite3.Connection, limit: int) -> list[JobRecord]:
        rows = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
        return [_READ.job(r) for r in rows]

    @on_worker
    def update_job(
        self, db: sqlite3.Connection, job_id: str, changes: Mapping[str, Any], updated_at: datetime
    ) -> JobRecord:
        assignments = ", ".join(f"{name} = ?" for name in [*changes, "updated_at"])
        with write_transaction(db):
            sql = f"UPDATE jobs SET {assignments} WHERE id = ?"
            if db.execute(sql, (*changes.values(), format_time(updated_at), job_id)).rowcount == 0:
                raise JobNotFoundError(job_id)
        return _job(db, job_id)

    @on_worker
    def delete_jobs(self, db: sqlite3.Connection, slug: str) -> int:
        with write_transaction(db):
            return db.execute("DELETE FROM jobs WHERE slug = ?", (slug,)).rowcount
