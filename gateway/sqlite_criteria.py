"""The criterion-definition SQL of the SQLite store (the table made by migration step 3 in gateway/sqlite_store.py):
plain functions on the sqlite3 connection, run on SqliteLogStore's worker thread only. A new version's number is
read and taken in one write transaction. Imports only the stdlib, gateway.criteria.definitions, gateway.store and
gateway.sqlite_transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.protocol import CriterionDefinition
from gateway.sqlite_transaction import write_transaction
from gateway.store import CriterionNotFoundError, next_criterion_version

COLUMNS = "slug, version, kind, spec, description, created_at, alignment"


def definitions(rows: list[Any]) -> list[CriterionDefinition]:
    return [
        CriterionDefinition(
            slug=r[0],
            version=r[1],
            kind=r[2],
            spec=json.loads(r[3]),
            description=r[4],
            created_at=r[5],
            alignment=None if r[6] is None else json.loads(r[6]),
        )
        for r in rows
    ]


def criterion_versions(db: sqlite3.Connection, slug: str) -> list[CriterionDefinition]:
    sql = f"SELECT {COLUMNS} FROM criteria WHERE slug = ? ORDER BY version"
    return definitions(db.execute(sql, (slug,)).fetchall())


def insert_criterion(
    db: sqlite3.Connection, slug: str, kind: str, spec: str, description: str, created_at: str, new_version: bool
) -> CriterionDefinition:
    with write_transaction(db):  # the version number is read and taken under the write lock
        version = next_criterion_version(slug, kind, criterion_versions(db, slug), new_version)
        db.execute(
            f"INSERT INTO criteria ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (slug, version, kind, spec, description, created_at),
        )
    # The version this call wrote: another store may have added a newer one since the commit.
    return next(d for d in criterion_versions(db, slug) if d.version == version)


def set_alignment(db: sqlite3.Connection, slug: str, version: int, report: str) -> CriterionDefinition:
    with write_transaction(db):
        sql = "UPDATE criteria SET alignment = ? WHERE slug = ? AND version = ?"
        updated = db.execute(sql, (report, slug, version))
        if updated.rowcount == 0:
            raise CriterionNotFoundError(f"{slug}@v{version}")
    return next(d for d in criterion_versions(db, slug) if d.version == version)
