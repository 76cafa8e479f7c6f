"""The dataset SQL of the Postgres store (tables made by migration step 4 in gateway/postgres_schema.py): datasets
and their entries, as async functions on one pooled connection; PostgresLogStore builds the ids and JSON text and
calls these. Imports psycopg, the stdlib and gateway.store only.

Entries keep insertion order through an identity `seq`; the cursor is that number, base64-encoded exactly as in
the SQLite store. add_entries locks the dataset's row first, so concurrent inserts into one dataset (from any
replica) take their seqs one transaction after the other, in commit order: a reader's cursor never passes an
entry that commits later with a smaller seq.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from gateway.store import (
    AddedEntries,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetRecord,
    EntryNotFoundError,
    EntryPage,
    EntryRecord,
)
from gateway.store_codec import encode_entry_cursor

Conn = psycopg.AsyncConnection[Any]
# (id, split, source, source_ref, pair JSON) of one entry to insert
EntryRow = tuple[str, str, str, str | None, str]

_DATASET_SELECT = """SELECT d.id, d.name, d.description, d.created_at,
    (SELECT count(*) FROM dataset_entries e WHERE e.dataset_id = d.id AND e.split = 'TRAIN'),
    (SELECT count(*) FROM dataset_entries e WHERE e.dataset_id = d.id AND e.split = 'TEST')
    FROM datasets d"""
_ENTRY_COLUMNS = "seq, id, dataset_id, created_at, split, source, source_ref, pair"
# By id or name; an id match wins should a name ever equal another dataset's id.
_RESOLVE = "SELECT id FROM datasets WHERE id = %s OR name = %s ORDER BY id = %s DESC LIMIT 1"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(row[0], row[1], row[2], _utc(row[3]), row[4], row[5])


async def _resolve(conn: Conn, ref: str, *, lock: bool = False) -> str:
    """The id of the dataset `ref` names; lock=True (in a transaction) holds its row until the commit."""
    row = await (await conn.execute(_RESOLVE + (" FOR UPDATE" if lock else ""), (ref, ref, ref))).fetchone()
    if row is None:
        raise DatasetNotFoundError(ref)
    return str(row[0])


async def _by(conn: Conn, column: str, value: str) -> DatasetRecord:
    row = await (await conn.execute(f"{_DATASET_SELECT} WHERE d.{column} = %s", (value,))).fetchone()
    if row is None:
        raise DatasetNotFoundError(value)
    return _dataset(row)


async def get_dataset(conn: Conn, ref: str) -> DatasetRecord:
    sql = f"{_DATASET_SELECT} WHERE d.id = %s OR d.name = %s ORDER BY d.id = %s DESC LIMIT 1"
    row = await (await conn.execute(sql, (ref, ref, ref))).fetchone()
    if row is None:
        raise DatasetNotFoundError(ref)
    return _dataset(row)


async def list_datasets(conn: Conn) -> list[DatasetRecord]:
    cur = await conn.execute(f"{_DATASET_SELECT} ORDER BY d.created_at DESC, d.seq DESC")
    return [_dataset(r) for r in await cur.fetchall()]


async def create_dataset(
    conn: Conn, dataset_id: str, name: str, description: str, created_at: datetime, exist_ok: bool
) -> DatasetRecord:
    # The unique name decides between replicas racing to create it: exactly one INSERT returns a row.
    sql = ("INSERT INTO datasets (id, name, description, created_at) VALUES (%s, %s, %s, %s)"
           " ON CONFLICT (name) DO NOTHING RETURNING id")  # fmt: skip
    inserted = await (await conn.execute(sql, (dataset_id, name, description, created_at))).fetchone()
    if inserted is None and not exist_ok:
        raise DatasetExistsError(name)
    return await _by(conn, "id", dataset_id) if inserted is not None else await _by(conn, "name", name)


async def delete_dataset(conn: Conn, ref: str) -> str:
    async with conn.transaction():
        dataset_id = await _resolve(conn, ref, lock=True)
        await conn.execute("DELETE FROM datasets WHERE id = %s", (dataset_id,))  # entries go by ON DELETE CASCADE
    return dataset_id


async def add_entries(conn: Conn, ref: str, rows: list[EntryRow], created_at: datetime) -> AddedEntries:
    duplicates: list[str] = []
    sql = (
        "INSERT INTO dataset_entries (id, dataset_id, created_at, split, source, source_ref, pair)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
        " ON CONFLICT (dataset_id, source_ref) WHERE source = 'log' DO NOTHING RETURNING seq"
    )
    async with conn.transaction():
        dataset_id = await _resolve(conn, ref, lock=True)
        if rows:
            params = [(entry_id, dataset_id, created_at, split, source, source_ref, pair)
                      for entry_id, split, source, source_ref, pair in rows]  # fmt: skip
            async with conn.cursor() as cur:
                await cur.executemany(sql, params, returning=True)  # pipelined: one round trip, one result per row
                for _, _, _, source_ref, _ in rows:
                    if await cur.fetchone() is None and source_ref is not None:
                        duplicates.append(source_ref)
                    cur.nextset()
        dataset = await _by(conn, "id", dataset_id)
    return AddedEntries(dataset, len(rows) - len(duplicates), tuple(duplicates))


async def list_entries(conn: Conn, ref: str, limit: int, after: int, split: str | None) -> EntryPage:
    dataset_id = await _resolve(conn, ref)
    where = "dataset_id = %s AND seq > %s" + (" AND split = %s" if split is not None else "")
    params: list[object] = [dataset_id, after, *([split] if split is not None else []), limit + 1]
    sql = f"SELECT {_ENTRY_COLUMNS} FROM dataset_entries WHERE {where} ORDER BY seq LIMIT %s"
    fetched = await (await conn.execute(sql, params)).fetchall()
    entries = tuple(EntryRecord(r[1], r[2], _utc(r[3]), r[4], r[5], r[6], r[7]) for r in fetched[:limit])
    return EntryPage(entries, encode_entry_cursor(fetched[limit - 1][0]) if len(fetched) > limit else None)


async def delete_entry(conn: Conn, ref: str, entry_id: str) -> None:
    dataset_id = await _resolve(conn, ref)
    cur = await conn.execute("DELETE FROM dataset_entries WHERE id = %s AND dataset_id = %s", (entry_id, dataset_id))
    if cur.rowcount == 0:
        raise EntryNotFoundError(entry_id)
