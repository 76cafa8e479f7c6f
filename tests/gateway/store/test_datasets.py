"""Datasets in the store, on both backends: create/get by id or name, listing order, entries in insertion order
with splits, cursors and counts, deletes (the entries go with their dataset), one pair per log, concurrent inserts
from two store instances. The migration of a database written before datasets existed is test_migrations.py's."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.protocol import Dataset, render
from gateway.store import (
    MAX_PAGE,
    DatasetExistsError,
    DatasetNotFoundError,
    EntryNotFoundError,
    InvalidInputError,
    LogStore,
    NewEntry,
    open_store,
)
from tests.gateway.conftest import Backend
from tests.gateway.store.conftest import pair

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


def ticking() -> Callable[[], datetime]:
    """A clock that moves one second per call, so creation order is unambiguous."""
    times = (T0 + timedelta(seconds=i) for i in range(10**6))
    return lambda: next(times)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[LogStore]:
    s = await open_store(store_url, clock=ticking())
    yield s
    await s.aclose()


async def test_create_get_list_and_names(store: LogStore) -> None:
    a = await store.create_dataset(name="support", description="tickets")
    b = await store.create_dataset(name="sales")
    assert re.fullmatch(r"ds_[0-9A-HJKMNP-TV-Z]{26}", a.id) and a.created_at == T0
    assert (a.name, a.description, a.train, a.test) == ("support", "tickets", 0, 0)
    assert await store.get_dataset(a.id) == a and await store.get_dataset("support") == a
    assert [d.name for d in await store.list_datasets()] == ["sales", "support"]  # newest first
    with pytest.raises(DatasetExistsError):
        await store.create_dataset(name="support")
    assert await store.create_dataset(name="sales", exist_ok=True) == b
    with pytest.raises(DatasetNotFoundError):
        await store.get_dataset("nothing")
    assert render(Dataset, a) == {"id": a.id, "object": "dataset", "name": "support", "description": "tickets",
                           "created_at": "2026-03-01T09:00:00.000000Z", "entries": 0,
                           "counts": {"TRAIN": 0, "TEST": 0}}  # fmt: skip


async def test_entries_keep_order_splits_counts_and_cursors(store: LogStore) -> None:
    ds = await store.create_dataset(name="d")
    added = await store.add_entries("d", [NewEntry(pair(i, "TEST" if i % 3 == 0 else "TRAIN")) for i in range(7)])
    assert added.added == 7 and (added.dataset.train, added.dataset.test) == (4, 3)
    assert render(Dataset, added.dataset)["entries"] == 7
    seen, cursor = [], None
    while True:
        page = await store.list_entries(ds.id, limit=3, cursor=cursor)
        seen += page.entries
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [e.pair["messages"][0]["content"] for e in seen] == [f"question {i}" for i in range(7)]
    assert all(re.fullmatch(r"dse_[0-9A-HJKMNP-TV-Z]{26}", e.id) and e.dataset_id == ds.id for e in seen)
    assert {(e.source, e.source_ref) for e in seen} == {("upload", None)}
    tests = (await store.list_entries("d", split="TEST", limit=MAX_PAGE)).entries
    assert [e.pair["messages"][0]["content"] for e in tests] == ["question 0", "question 3", "question 6"]
    for bad in ({"limit": 0}, {"limit": MAX_PAGE + 1}, {"split": "VALID"}, {"cursor": "???"}, {"cursor": "eHl6"}):
        with pytest.raises(InvalidInputError):
            await store.list_entries("d", **bad)
    with pytest.raises(InvalidInputError):
        await store.add_entries("d", [NewEntry({**pair(9), "split": "DEV"})])
    assert (await store.get_dataset("d")).train == 4  # a refused batch adds nothing


async def test_deletes_and_one_pair_per_log(store: LogStore) -> None:
    await store.create_dataset(name="d")
    other = await store.create_dataset(name="other")
    first = await store.add_entries("d", [NewEntry(pair(1), "log", "log_a"), NewEntry(pair(2), "feedback", "log_a")])
    again = await store.add_entries("d", [NewEntry(pair(1), "log", "log_a"), NewEntry(pair(3), "log", "log_b")])
    assert (first.added, again.added, again.duplicates) == (2, 1, ("log_a",))
    assert (await store.add_entries("other", [NewEntry(pair(1), "log", "log_a")])).added == 1  # another dataset
    entries = (await store.list_entries("d")).entries
    with pytest.raises(EntryNotFoundError):
        await store.delete_entry("other", entries[0].id)  # an entry of another dataset
    await store.delete_entry("d", entries[0].id)
    assert [e.id for e in (await store.list_entries("d")).entries] == [e.id for e in entries[1:]]
    with pytest.raises(EntryNotFoundError):
        await store.delete_entry("d", entries[0].id)
    assert await store.delete_dataset("d") == entries[0].dataset_id
    with pytest.raises(DatasetNotFoundError):
        await store.list_entries("d")
    with pytest.raises(DatasetNotFoundError):
        await store.add_entries("d", [NewEntry(pair(4))])
    assert (await store.get_dataset(other.id)).train == 1


async def test_deleting_a_dataset_removes_its_entries_rows(backend: Backend) -> None:
    store = await open_store(backend.url)
    try:
        await store.create_dataset(name="d")
        await store.add_entries("d", [NewEntry(pair(i)) for i in range(3)])
        await store.delete_dataset("d")
    finally:
        await store.aclose()
    assert await backend.count("dataset_entries") == 0


async def test_concurrent_creates_of_one_name_make_one_dataset(store_url: str) -> None:
    one, two = await open_store(store_url), await open_store(store_url)
    try:
        made = await asyncio.gather(*(s.create_dataset(name="d") for s in [one, two] * 3), return_exceptions=True)
        created = [d for d in made if not isinstance(d, BaseException)]
        assert len(created) == 1 and all(isinstance(e, DatasetExistsError) for e in made if e not in created)
        again = await asyncio.gather(*(s.create_dataset(name="d", exist_ok=True) for s in [one, two] * 3))
        assert {d.id for d in again} == {created[0].id} and len(await one.list_datasets()) == 1
    finally:
        await one.aclose()
        await two.aclose()


async def test_concurrent_inserts_from_two_stores_lose_nothing(store_url: str) -> None:
    one, two = await open_store(store_url), await open_store(store_url)
    try:
        await one.create_dataset(name="d")
        batches = [[NewEntry(pair(100 * b + i)) for i in range(25)] for b in range(8)]
        writers = [one, two] * 4
        results = await asyncio.gather(*(s.add_entries("d", b) for s, b in zip(writers, batches, strict=True)))
        assert sum(r.added for r in results) == 200
        entries = (await two.list_entries("d", limit=MAX_PAGE)).entries
        assert len(entries) == 200 and len({e.id for e in entries}) == 200
        for batch in batches:  # every batch was written whole, in its own order
            mine = [e.pair["messages"][0]["content"] for e in entries if e.pair in [dict(n.pair) for n in batch]]
            assert mine == [n.pair["messages"][0]["content"] for n in batch]
        assert (await one.get_dataset("d")).train == 200
    finally:
        await one.aclose()
        await two.aclose()
