"""Criterion definitions in the store, on both backends: version numbering (also under concurrent writers, each
its own store as a gateway replica is), immutability, kind conflicts, alignment reports. The migration of a
database written before definitions existed is test_migrations.py's."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import CriterionExistsError, CriterionNotFoundError, open_store

pytestmark = pytest.mark.anyio
SPEC = {"type": "json"}


async def test_versions_count_up_per_slug_and_never_change(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        first = await store.create_criterion(slug="a", kind="rule", spec=SPEC, description="one")
        second = await store.create_criterion(slug="a", kind="rule", spec={"type": "length", "max_chars": 9},
                                              new_version=True)  # fmt: skip
        other = await store.create_criterion(slug="b", kind="llm_judge", spec={"model": "x:y", "instructions": "i"})
        assert (first.id, second.id, other.id) == ("a@v1", "a@v2", "b@v1")
        versions = await store.criterion_versions("a")
        assert [(d.version, dict(d.spec), d.description) for d in versions] == [
            (1, SPEC, "one"),
            (2, {"type": "length", "max_chars": 9}, ""),
        ]
        assert [d.id for d in await store.list_criteria()] == ["a@v1", "a@v2", "b@v1"]
        assert list(await store.criterion_versions("nothing")) == []
    finally:
        await store.aclose()


async def test_conflicts_and_missing_slugs(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.create_criterion(slug="a", kind="rule", spec=SPEC)
        with pytest.raises(CriterionExistsError, match="add a version"):
            await store.create_criterion(slug="a", kind="rule", spec=SPEC)
        with pytest.raises(CriterionExistsError, match="is a rule criterion"):
            await store.create_criterion(slug="a", kind="llm_judge", spec=SPEC, new_version=True)
        with pytest.raises(CriterionNotFoundError):
            await store.create_criterion(slug="zzz", kind="rule", spec=SPEC, new_version=True)
        with pytest.raises(CriterionNotFoundError):
            await store.set_alignment("a", 5, {"f1": 1.0})
        assert [d.id for d in await store.list_criteria()] == ["a@v1"]
    finally:
        await store.aclose()


async def test_concurrent_new_versions_from_two_stores_get_distinct_numbers(store_url: str) -> None:
    one, two = await open_store(store_url), await open_store(store_url)
    try:
        await one.create_criterion(slug="a", kind="rule", spec=SPEC)
        made = await asyncio.gather(
            *(s.create_criterion(slug="a", kind="rule", spec=SPEC, new_version=True) for s in [one, two] * 4)
        )
        assert sorted(d.version for d in made) == [2, 3, 4, 5, 6, 7, 8, 9]
        assert [d.version for d in await two.criterion_versions("a")] == list(range(1, 10))
    finally:
        await one.aclose()
        await two.aclose()


async def test_concurrent_creates_of_one_new_slug_make_one_v1(store_url: str) -> None:
    stores = [await open_store(store_url) for _ in range(3)]
    try:
        made = await asyncio.gather(
            *(s.create_criterion(slug="new", kind="rule", spec=SPEC) for s in stores * 2), return_exceptions=True
        )
        assert [d.id for d in made if not isinstance(d, BaseException)] == ["new@v1"]
        assert all(isinstance(e, CriterionExistsError) for e in made if isinstance(e, BaseException))
    finally:
        for s in stores:
            await s.aclose()


async def test_alignment_is_attached_to_one_version(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.create_criterion(slug="a", kind="rule", spec=SPEC)
        await store.create_criterion(slug="a", kind="rule", spec=SPEC, new_version=True)
        updated = await store.set_alignment("a", 1, {"f1": 0.5, "confusion": {"tp": 1}})
        assert updated.alignment == {"f1": 0.5, "confusion": {"tp": 1}}
        first, second = await store.criterion_versions("a")
        assert first.alignment == {"f1": 0.5, "confusion": {"tp": 1}} and second.alignment is None
    finally:
        await store.aclose()
