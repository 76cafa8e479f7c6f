"""The criterion-definition SQL of the Postgres store (the table made by migration step 3 in
gateway/postgres_schema.py), as async functions on one pooled connection. Imports psycopg, the stdlib,
gateway.criteria.definitions and gateway.store only.

A new version's number is read and taken under a transaction-scoped advisory lock on its slug, so two
replicas adding versions at once get distinct, consecutive numbers, and two creating one new slug make one v1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from gateway.protocol import CriterionDefinition
from gateway.store import CriterionNotFoundError, _format_time, next_criterion_version

Conn = psycopg.AsyncConnection[Any]

_CRITERION_COLUMNS = "slug, version, kind, spec, description, created_at, alignment"
# Per slug; the schema is part of the key because several rewardgate schemas may share one database.
_CRITERION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('rewardgate.criteria.' || coalesce(current_schema(), '')), hashtext(%s))"
)


def _definitions(rows: list[Any]) -> list[CriterionDefinition]:
    return [
        CriterionDefinition(
            slug=r[0],
            version=r[1],
            kind=r[2],
            spec=r[3],
            description=r[4],
            created_at=_format_time(r[5]),
            alignment=r[6],
        )
        for r in rows
    ]


async def criterion_versions(conn: Conn, slug: str) -> list[CriterionDefinition]:
    sql = f"SELECT {_CRITERION_COLUMNS} FROM criteria WHERE slug = %s ORDER BY version"
    return _definitions(await (await conn.execute(sql, (slug,))).fetchall())


async def insert_criterion(
    conn: Conn, slug: str, kind: str, spec: str, description: str, created_at: datetime, new_version: bool
) -> CriterionDefinition:
    async with conn.transaction():  # the version number is read and taken under the slug's lock
        await conn.execute(_CRITERION_LOCK, (slug,))
        version = next_criterion_version(slug, kind, await criterion_versions(conn, slug), new_version)
        sql = (f"INSERT INTO criteria ({_CRITERION_COLUMNS}) VALUES (%s, %s, %s, %s::jsonb, %s, %s, NULL)"
               f" RETURNING {_CRITERION_COLUMNS}")  # fmt: skip
        row = await (await conn.execute(sql, (slug, version, kind, spec, description, created_at))).fetchall()
    return _definitions(row)[0]


async def set_alignment(conn: Conn, slug: str, version: int, report: str) -> CriterionDefinition:
    sql = (f"UPDATE criteria SET alignment = %s::jsonb WHERE slug = %s AND version = %s"
           f" RETURNING {_CRITERION_COLUMNS}")  # fmt: skip
    rows = await (await conn.execute(sql, (report, slug, version))).fetchall()
    if not rows:
        raise CriterionNotFoundError(f"{slug}@v{version}")
    return _definitions(rows)[0]


async def list_criteria(conn: Conn) -> list[CriterionDefinition]:
    sql = f"SELECT {_CRITERION_COLUMNS} FROM criteria ORDER BY slug, version"
    return _definitions(await (await conn.execute(sql)).fetchall())
