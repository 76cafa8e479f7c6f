"""SQLite implementation of gateway.store.LogStore: WAL mode, ordered schema migrations, one worker thread.

SQLite runs on ONE worker thread that owns the connection, so the event loop never blocks; every write
is one transaction. The dataset SQL lives in gateway/sqlite_datasets.py. Imports only the stdlib, gateway.store
and its sibling sqlite_* modules (no starlette, httpx, torch or litellm).
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from gateway import sqlite_criteria, sqlite_datasets, sqlite_jobs
from gateway.formats import SPLITS
from gateway.protocol import CriterionDefinition
from gateway.sqlite_transaction import write_transaction
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
    _format_time,
    _parse_time,
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

# Ordered schema steps: step i brings a database to PRAGMA user_version i + 1. Append; never edit one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: logs and their candidates
        """CREATE TABLE logs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, model TEXT NOT NULL,
            request TEXT NOT NULL, upstream_ms REAL, scoring_ms REAL, total_ms REAL,
            metadata TEXT NOT NULL DEFAULT '{}', criteria_versions TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX logs_created ON logs (created_at, id)",
        """CREATE TABLE candidates (log_id TEXT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, message TEXT, status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            finish_reason TEXT, error TEXT, score REAL, rank INTEGER, criteria_results TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (log_id, idx))""",
    ),
    (  # 2: metadata also as indexed rows, so a metadata filter needs no JSON scan; a model filter index
        """CREATE TABLE log_metadata (log_id TEXT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
            key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (log_id, key))""",
        "CREATE INDEX log_metadata_key_value ON log_metadata (key, value)",
        "INSERT INTO log_metadata SELECT logs.id, j.key, j.value FROM logs, json_each(logs.metadata) AS j",
        "CREATE INDEX logs_model_created ON logs (model, created_at, id)",
    ),
    (  # 3: criterion definitions, one immutable row per version
        """CREATE TABLE criteria (slug TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
            spec TEXT NOT NULL, description TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, alignment TEXT,
            PRIMARY KEY (slug, version))""",
    ),
    (  # 4: datasets of preference pairs; entries keep insertion order by an AUTOINCREMENT seq (never reused)
        """CREATE TABLE datasets (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL)""",
        "CREATE INDEX datasets_created ON datasets (created_at)",
        """CREATE TABLE dataset_entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE, created_at TEXT NOT NULL,
            split TEXT NOT NULL CHECK (split IN ('TRAIN', 'TEST')), source TEXT NOT NULL
            CHECK (source IN ('upload', 'log', 'feedback')), source_ref TEXT, pair TEXT NOT NULL)""",
        "CREATE INDEX dataset_entries_order ON dataset_entries (dataset_id, seq)",
        "CREATE INDEX dataset_entries_split ON dataset_entries (dataset_id, split, seq)",  # counts and ?split=
        # one pair per log and dataset from from-logs: running it again adds only the logs not yet in
        "CREATE UNIQUE INDEX dataset_entries_log ON dataset_entries (dataset_id, source_ref) WHERE source = 'log'",
    ),
    (  # 5: reward-model training jobs
        """CREATE TABLE jobs (id TEXT PRIMARY KEY, slug TEXT NOT NULL, dataset_id TEXT NOT NULL,
            base_model TEXT NOT NULL, hyperparameters TEXT NOT NULL, data_path TEXT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('PENDING', 'QUEUED', 'TRAINING', 'DEPLOYED', 'ERROR')), error TEXT,
            progress TEXT, metrics TEXT, reward_stats TEXT, version TEXT, resumed INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX jobs_created ON jobs (created_at, id)",
    ),
)


# ---------------------------------------------------------------- SQL, run on the worker thread only


def _schema_version(db: sqlite3.Connection) -> int:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(f"database schema v{version} is newer than this code knows (v{len(MIGRATIONS)})")
    return version


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the pending MIGRATIONS, each in one transaction with its user_version bump: idempotent, and
    safe when another process migrates at the same time (the version is re-read under the write lock)."""
    while _schema_version(db) < len(MIGRATIONS):
        with write_transaction(db):
            version = _schema_version(db)
            if version < len(MIGRATIONS):
                for statement in MIGRATIONS[version]:
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
            busy = exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() >= deadline:
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


_LOG_COLUMNS = "id, created_at, model, request, upstream_ms, scoring_ms, total_ms, metadata, criteria_versions"
_CANDIDATE_ORDER = "rank IS NULL, rank, idx"


def _write_metadata(db: sqlite3.Connection, log_id: str, metadata: Mapping[str, str]) -> None:
    db.execute("UPDATE logs SET metadata = ? WHERE id = ?", (dump_json(metadata, "metadata"), log_id))
    db.execute("DELETE FROM log_metadata WHERE log_id = ?", (log_id,))
    db.executemany("INSERT INTO log_metadata VALUES (?, ?, ?)", [(log_id, k, v) for k, v in metadata.items()])


def _insert(db: sqlite3.Connection, log: LogRecord) -> None:
    with write_transaction(db):
        lat = log.latencies
        db.execute(
            f"INSERT INTO logs ({_LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, '{{}}', ?)",
            (log.id, _format_time(log.created_at), log.model, dump_json(log.request, "request"),
             lat.upstream_ms, lat.scoring_ms, lat.total_ms, dump_json(log.criteria_versions, "criteria_versions")),
        )  # fmt: skip
        _write_metadata(db, log.id, log.metadata)
        for c in log.candidates:
            db.execute(
                "INSERT INTO candidates (log_id, idx, message, status, finish_reason, error, score, rank,"
                " criteria_results) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (log.id, c.index, None if c.message is None else dump_json(c.message, f"candidates[{c.index}].message"),
                 c.status, c.finish_reason, c.error, c.score, c.rank,
                 dump_json(c.criteria_results, f"candidates[{c.index}].criteria_results")),
            )  # fmt: skip


def _load(db: sqlite3.Connection, rows: list[Any]) -> list[LogRecord]:
    """LogRecords for rows of _LOG_COLUMNS, with their candidates fetched in one query."""
    candidates: dict[str, list[CandidateRecord]] = {row[0]: [] for row in rows}
    if rows:
        marks = ", ".join("?" * len(rows))
        sql = (
            "SELECT log_id, idx, message, status, finish_reason, error, score, rank, criteria_results"
            f" FROM candidates WHERE log_id IN ({marks}) ORDER BY {_CANDIDATE_ORDER}"
        )
        for r in db.execute(sql, list(candidates)):
            message = None if r[2] is None else json.loads(r[2])
            candidates[r[0]].append(CandidateRecord(r[1], message, r[3], r[4], r[5], r[6], r[7], json.loads(r[8])))
    return [
        LogRecord(
            r[0],
            _parse_time(r[1]),
            r[2],
            json.loads(r[3]),
            Latencies(r[4], r[5], r[6]),
            json.loads(r[7]),
            json.loads(r[8]),
            tuple(candidates[r[0]]),
        )
        for r in rows
    ]


def _fetch(db: sqlite3.Connection, log_id: str) -> LogRecord:
    rows = db.execute(f"SELECT {_LOG_COLUMNS} FROM logs WHERE id = ?", (log_id,)).fetchall()
    if not rows:
        raise LogNotFoundError(log_id)
    return _load(db, rows)[0]


def _add_criterion_results(db: sqlite3.Connection, log_id: str, slug: str, results: Mapping[int, str]) -> None:
    with write_transaction(db):
        if db.execute("SELECT 1 FROM logs WHERE id = ?", (log_id,)).fetchone() is None:
            raise LogNotFoundError(log_id)
        for index, result in results.items():
            db.execute(
                "UPDATE candidates SET criteria_results = json_set(criteria_results, ?, json(?))"
                " WHERE log_id = ? AND idx = ?",
                (f'$."{slug}"', result, log_id, index),
            )


def _update_metadata(db: sqlite3.Connection, log_id: str, patch: Mapping[str, str | None]) -> LogRecord:
    with write_transaction(db):
        row = db.execute("SELECT metadata FROM logs WHERE id = ?", (log_id,)).fetchone()
        if row is None:
            raise LogNotFoundError(log_id)
        merged: dict[str, object] = json.loads(row[0])
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        _write_metadata(db, log_id, validate_metadata(merged))
        return _fetch(db, log_id)


def _list(db: sqlite3.Connection, query: LogQuery, limit: int, after: tuple[datetime, str] | None) -> LogPage:
    clauses: list[str] = []
    params: list[object] = []
    for key, value in query.metadata.items():
        clauses.append("EXISTS (SELECT 1 FROM log_metadata m WHERE m.log_id = logs.id AND m.key = ? AND m.value = ?)")
        params += [key, value]
    since, before = (None if t is None else _format_time(t, "query") for t in (query.since, query.before))
    filters = {"model = ?": query.model, "created_at >= ?": since, "created_at < ?": before}
    for clause, arg in filters.items():
        if arg is not None:
            clauses.append(clause)
            params.append(arg)
    if after is not None:  # keyset pagination: logs stored after the first page never shift later pages
        clauses.append("(created_at, id) < (?, ?)")
        params += [_format_time(after[0]), after[1]]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {_LOG_COLUMNS} FROM logs {where} ORDER BY created_at DESC, id DESC LIMIT ?"
    rows = db.execute(sql, [*params, limit + 1]).fetchall()
    logs = _load(db, rows[:limit])
    if len(rows) <= limit:
        return LogPage(tuple(logs), None)
    last = rows[limit - 1]  # (id, created_at, ...) of the page's last log
    return LogPage(tuple(logs), encode_log_cursor(_parse_time(last[1]), last[0]))


class SqliteLogStore:
    """LogStore on one SQLite file (WAL). One worker thread owns the connection; every call queues to it.

    A call cancelled while it waits still runs to completion on the worker (a create may still commit).
    """

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0, clock: Callable[[], datetime] = _utcnow) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardgate-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

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
            raise InvalidInputError(f"the database rejected the log: {exc}") from exc
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreBusyError(
                    f"{self._path}: the database stayed locked longer than {self._busy_timeout_s}s"
                ) from exc
            raise StoreError(f"{self._path}: {exc}") from exc

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
        await self._run(lambda db: _insert(db, log))
        return log

    async def get_log(self, log_id: str) -> LogRecord:
        return await self._run(lambda db: _fetch(db, log_id))

    async def list_logs(self, query: LogQuery | None = None, *, limit: int = 50, cursor: str | None = None) -> LogPage:
        """One page of the logs matching `query`, newest first; `cursor` is the previous page's next_cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        after = decode_log_cursor(cursor) if cursor is not None else None
        q = query or LogQuery()
        return await self._run(lambda db: _list(db, q, limit, after))

    async def add_criterion_results(self, log_id: str, slug: str, results: Mapping[int, Mapping[str, Any]]) -> None:
        """See LogStore.add_criterion_results."""
        texts = {index: dump_json(dict(result), f"criteria_results[{slug!r}]") for index, result in results.items()}
        await self._run(lambda db: _add_criterion_results(db, log_id, slug, texts))

    async def update_metadata(self, log_id: str, patch: Mapping[str, str | None]) -> LogRecord:
        """Merge `patch` into the log's metadata (a None value removes that key); validated like create_log."""
        if not isinstance(patch, Mapping):
            raise MetadataError(None, f"must be an object of strings, got {type(patch).__name__}")
        frozen = dict(patch)
        return await self._run(lambda db: _update_metadata(db, log_id, frozen))

    def export_jsonl(self, query: LogQuery | None = None) -> AsyncIterator[str]:
        return export_jsonl(self, query)

    def export_pairs(self, query: LogQuery | None = None) -> AsyncIterator[str]:
        return export_pairs(self, query)

    async def create_criterion(
        self, *, slug: str, kind: str, spec: Mapping[str, Any], description: str = "", new_version: bool = False
    ) -> CriterionDefinition:
        """The next version of `slug`; see LogStore.create_criterion."""
        text = dump_json(dict(spec), "spec")
        when = _format_time(self._clock())
        return await self._run(
            lambda db: sqlite_criteria.insert_criterion(db, slug, kind, text, description, when, new_version)
        )

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        return await self._run(lambda db: sqlite_criteria.criterion_versions(db, slug))

    async def list_criteria(self) -> Sequence[CriterionDefinition]:
        sql = f"SELECT {sqlite_criteria.COLUMNS} FROM criteria ORDER BY slug, version"
        return await self._run(lambda db: sqlite_criteria.definitions(db.execute(sql).fetchall()))

    async def set_alignment(self, slug: str, version: int, report: Mapping[str, Any]) -> CriterionDefinition:
        """Attach an alignment report to one version (the latest report replaces an earlier one)."""
        text = dump_json(dict(report), "alignment")
        return await self._run(lambda db: sqlite_criteria.set_alignment(db, slug, version, text))

    async def create_dataset(self, *, name: str, description: str = "", exist_ok: bool = False) -> DatasetRecord:
        when = self._clock()
        dataset_id, created_at = new_id("ds", when), _format_time(when)
        return await self._run(
            lambda db: sqlite_datasets.create_dataset(db, dataset_id, name, description, created_at, exist_ok)
        )

    async def get_dataset(self, dataset: str) -> DatasetRecord:
        return await self._run(lambda db: sqlite_datasets.get_dataset(db, dataset))

    async def list_datasets(self) -> Sequence[DatasetRecord]:
        return await self._run(sqlite_datasets.list_datasets)

    async def delete_dataset(self, dataset: str) -> str:
        return await self._run(lambda db: sqlite_datasets.delete_dataset(db, dataset))

    async def add_entries(self, dataset: str, entries: Sequence[NewEntry]) -> AddedEntries:
        """See LogStore.add_entries; every entry's pair must carry a TRAIN or TEST split."""
        when = self._clock()
        rows: list[sqlite_datasets.EntryRow] = []
        for i, entry in enumerate(entries):
            split = entry.pair.get("split")
            if split not in SPLITS or entry.source not in ("upload", "log", "feedback"):
                raise InvalidInputError(f"entries[{i}]: split {split!r} / source {entry.source!r} not allowed")
            pair = dump_json(dict(entry.pair), f"entries[{i}].pair")
            rows.append((new_id("dse", when), str(split), entry.source, entry.source_ref, pair))
        created_at = _format_time(when)
        return await self._run(lambda db: sqlite_datasets.add_entries(db, dataset, rows, created_at))

    async def list_entries(
        self, dataset: str, *, limit: int = 50, cursor: str | None = None, split: str | None = None
    ) -> EntryPage:
        """One page of the dataset's entries in insertion order, optionally of one split."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if split is not None and split not in SPLITS:
            raise InvalidInputError(f"split must be TRAIN or TEST, got {split!r}")
        after = decode_entry_cursor(cursor) if cursor is not None else 0
        return await self._run(lambda db: sqlite_datasets.list_entries(db, dataset, limit, after, split))

    async def delete_entry(self, dataset: str, entry_id: str) -> None:
        await self._run(lambda db: sqlite_datasets.delete_entry(db, dataset, entry_id))

    async def create_job(self, job: JobRecord) -> JobRecord:
        await self._run(lambda db: sqlite_jobs.insert_job(db, job))
        return job

    async def get_job(self, job_id: str) -> JobRecord:
        return await self._run(lambda db: sqlite_jobs.fetch_job(db, job_id))

    async def list_jobs(self, *, limit: int = 100) -> Sequence[JobRecord]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        return await self._run(lambda db: sqlite_jobs.list_jobs(db, limit))

    async def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = sorted(set(changes) - set(JOB_FIELDS))
        if unknown:
            raise InvalidInputError(f"not a job field: {unknown[0]!r}")
        when = _format_time(self._clock())
        return await self._run(lambda db: sqlite_jobs.update_job(db, job_id, changes, when))

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
