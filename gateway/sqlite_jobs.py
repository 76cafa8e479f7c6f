"""The training-job SQL of the SQLite store (the table made by migration step 5 in gateway/sqlite_store.py).
Plain functions on the sqlite3 connection, run on SqliteLogStore's worker thread only. Imports only the stdlib,
gateway.store and gateway.sqlite_transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from gateway.sqlite_transaction import write_transaction
from gateway.store import JobNotFoundError, JobRecord, _format_time, _parse_time

_COLUMNS = ("id, slug, dataset_id, base_model, hyperparameters, data_path, created_at, updated_at, state, error,"
            " progress, metrics, reward_stats, version, resumed")  # fmt: skip
_JSON_FIELDS = ("progress", "metrics", "reward_stats")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)


def _record(r: Any) -> JobRecord:
    def loads(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    return JobRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], _parse_time(r[6]), _parse_time(r[7]), r[8],
                     r[9], loads(r[10]), loads(r[11]), loads(r[12]), r[13], r[14])  # fmt: skip


def insert_job(db: sqlite3.Connection, job: JobRecord) -> None:
    with write_transaction(db):
        db.execute(
            f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
            (job.id, job.slug, job.dataset_id, job.base_model, _json(dict(job.hyperparameters)), job.data_path,
             _format_time(job.created_at), _format_time(job.updated_at), job.state, job.error, _json(job.progress),
             _json(job.metrics), _json(job.reward_stats), job.version, job.resumed),
        )  # fmt: skip


def fetch_job(db: sqlite3.Connection, job_id: str) -> JobRecord:
    row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFoundError(job_id)
    return _record(row)


def list_jobs(db: sqlite3.Connection, limit: int) -> list[JobRecord]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
    return [_record(r) for r in rows]


def update_job(db: sqlite3.Connection, job_id: str, changes: Mapping[str, Any], updated_at: str) -> JobRecord:
    """`changes`: JOB_FIELDS names (checked by the caller) -> values; JSON fields are dumped here."""
    values = {k: _json(v) if k in _JSON_FIELDS else v for k, v in changes.items()}
    assignments = ", ".join(f"{name} = ?" for name in [*values, "updated_at"])
    with write_transaction(db):
        updated = db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), updated_at, job_id))
        if updated.rowcount == 0:
            raise JobNotFoundError(job_id)
    return fetch_job(db, job_id)
