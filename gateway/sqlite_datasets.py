"""The dataset SQL of the SQLite store (tables made by migration step 4 in gateway/sqlite_store.py): datasets and
their entries. Plain functions on the sqlite3 connection, run on SqliteLogStore's worker thread only; the class
methods there build the ids and JSON text and call these. Imports only the stdlib, gateway.store and
gateway.sqlite_transaction (no starlette, httpx, torch or litellm).

Entries keep insertion order through an AUTOINCREMENT `seq` (never reused, so a cursor never skips a later
entry); the cursor is that number, base64-encoded.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.sqlite_transaction import write_transaction
from gateway.store import (
    AddedEntries,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetRecord,
    EntryNotFoundError,
    EntryPage,
    EntryRecord,
    _parse_time,
)
from gateway.store_codec import encode_entry_cursor

# (id, split, source, source_ref, pair JSON) of one entry to insert
EntryRow = tuple[str, str, str, str | None, str]

_DATASET_SELECT = """SELECT d.id, d.name, d.description, d.created_at,
    (SELECT count(*) FROM dataset_entries e WHERE e.dataset_id = d.id AND e.split = 'TRAIN'),
    (SELECT count(*) FROM dataset_entries e WHERE e.dataset_id = d.id AND e.split = 'TEST')
    FROM datasets d"""
_ENTRY_COLUMNS = "seq, id, dataset_id, created_at, split, source, source_ref, pair"


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(row[0], row[1], row[2], _parse_time(row[3]), row[4], row[5])


def get_dataset(db: sqlite3.Connection, ref: str) -> DatasetRecord:
    """By id or name; an id match wins should a name ever equal another dataset's id."""
    sql = f"{_DATASET_SELECT} WHERE d.id = ? OR d.name = ? ORDER BY d.id = ? DESC LIMIT 1"
    row = db.execute(sql, (ref, ref, ref)).fetchone()
    if row is None:
        raise DatasetNotFoundError(ref)
    return _dataset(row)


def list_datasets(db: sqlite3.Connection) -> list[DatasetRecord]:
    return [_dataset(r) for r in db.execute(f"{_DATASET_SELECT} ORDER BY d.created_at DESC, d.rowid DESC")]


def create_dataset(
    db: sqlite3.Connection, dataset_id: str, name: str, description: str, created_at: str, exist_ok: bool
) -> DatasetRecord:
    with write_transaction(db):  # the name is checked and taken under the write lock
        taken = db.execute("SELECT id FROM datasets WHERE name = ?", (name,)).fetchone()
        if taken is not None and not exist_ok:
            raise DatasetExistsError(name)
        if taken is None:
            sql = "INSERT INTO datasets (id, name, description, created_at) VALUES (?, ?, ?, ?)"
            db.execute(sql, (dataset_id, name, description, created_at))
    return get_dataset(db, taken[0] if taken is not None else dataset_id)


def delete_dataset(db: sqlite3.Connection, ref: str) -> str:
    with write_transaction(db):
        dataset_id = get_dataset(db, ref).id
        db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))  # entries go by ON DELETE CASCADE
    return dataset_id


def add_entries(db: sqlite3.Connection, ref: str, rows: list[EntryRow], created_at: str) -> AddedEntries:
    duplicates: list[str] = []
    with write_transaction(db):
        dataset_id = get_dataset(db, ref).id
        sql = (
            "INSERT INTO dataset_entries (id, dataset_id, created_at, split, source, source_ref, pair)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset_id, source_ref) WHERE source = 'log' DO NOTHING"
        )
        for entry_id, split, source, source_ref, pair in rows:
            inserted = db.execute(sql, (entry_id, dataset_id, created_at, split, source, source_ref, pair))
            if inserted.rowcount == 0 and source_ref is not None:
                duplicates.append(source_ref)
    return AddedEntries(get_dataset(db, dataset_id), len(rows) - len(duplicates), tuple(duplicates))


def list_entries(db: sqlite3.Connection, ref: str, limit: int, after: int, split: str | None) -> EntryPage:
    dataset_id = get_dataset(db, ref).id
    where = "dataset_id = ? AND seq > ?" + (" AND split = ?" if split is not None else "")
    params: list[object] = [dataset_id, after, *([split] if split is not None else []), limit + 1]
    rows = db.execute(f"SELECT {_ENTRY_COLUMNS} FROM dataset_entries WHERE {where} ORDER BY seq LIMIT ?", params)
    fetched = rows.fetchall()
    entries = tuple(
        EntryRecord(r[1], r[2], _parse_time(r[3]), r[4], r[5], r[6], json.loads(r[7])) for r in fetched[:limit]
    )
    return EntryPage(entries, encode_entry_cursor(fetched[limit - 1][0]) if len(fetched) > limit else None)


def delete_entry(db: sqlite3.Connection, ref: str, entry_id: str) -> None:
    with write_transaction(db):
        dataset_id = get_dataset(db, ref).id
        deleted = db.execute("DELETE FROM dataset_entries WHERE id = ? AND dataset_id = ?", (entry_id, dataset_id))
        if deleted.rowcount == 0:
            raise EntryNotFoundError(entry_id)
