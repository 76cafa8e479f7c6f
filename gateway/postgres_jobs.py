"""The training-job SQL of the Postgres store (the table made by migration step 5 in gateway/postgres_schema.py),
as async functions on one pooled connection. Imports psycopg, the stdlib and gateway.store only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

from gateway.store import InvalidInputError, JobNotFoundError, JobRecord

Conn = psycopg.AsyncConnection[Any]
_COLUMNS = ("id, slug, dataset_id, base_model, hyperparameters, data_path, created_at, updated_at, state, error,"
            " progress, metrics, reward_stats, version, resumed")  # fmt: skip
_JSON_FIELDS = ("progress", "metrics", "reward_stats")


def _json(value: Any, what: str) -> str | None:
    try:
        return None if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"job {what}: not storable as JSON ({exc})") from None


def _record(r: Any) -> JobRecord:
    return JobRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6].astimezone(UTC), r[7].astimezone(UTC), r[8], r[9],
                     r[10], r[11], r[12], r[13], r[14])  # fmt: skip


async def insert_job(conn: Conn, job: JobRecord) -> None:
    marks = ", ".join("%s::jsonb" if i in (4, 10, 11, 12) else "%s" for i in range(15))
    await conn.execute(
        f"INSERT INTO jobs ({_COLUMNS}) VALUES ({marks})",
        (job.id, job.slug, job.dataset_id, job.base_model, _json(dict(job.hyperparameters), "hyperparameters"),
         job.data_path, job.created_at, job.updated_at, job.state, job.error, _json(job.progress, "progress"),
         _json(job.metrics, "metrics"), _json(job.reward_stats, "reward_stats"), job.version, job.resumed),
    )  # fmt: skip


async def fetch_job(conn: Conn, job_id: str) -> JobRecord:
    row = await (await conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,))).fetchone()
    if row is None:
        raise JobNotFoundError(job_id)
    return _record(row)


async def list_jobs(conn: Conn, limit: int) -> list[JobRecord]:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT %s", (limit,))
    return [_record(r) for r in await cur.fetchall()]


async def update_job(conn: Conn, job_id: str, changes: Mapping[str, Any], updated_at: datetime) -> JobRecord:
    """`changes`: JOB_FIELDS names (checked by the caller, so safe to splice) -> values; JSON fields dumped here."""
    values = {k: _json(v, k) if k in _JSON_FIELDS else v for k, v in changes.items()}
    assignments = ", ".join(
        [*(f"{name} = %s::jsonb" if name in _JSON_FIELDS else f"{name} = %s" for name in values), "updated_at = %s"]
    )
    sql = f"UPDATE jobs SET {assignments} WHERE id = %s RETURNING {_COLUMNS}"
    row = await (await conn.execute(sql, (*values.values(), updated_at, job_id))).fetchone()
    if row is None:
        raise JobNotFoundError(job_id)
    return _record(row)
