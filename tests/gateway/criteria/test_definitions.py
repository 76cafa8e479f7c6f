"""gateway/criteria/definitions.py: version selection and the TTL cache in front of the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.criteria import CriterionRef, UnknownCriterionError
from gateway.criteria.definitions import CachedDefinitions, InMemoryDefinitions, select_version
from gateway.protocol import CriterionDefinition

pytestmark = pytest.mark.anyio


def rule(slug: str, version: int) -> CriterionDefinition:
    return CriterionDefinition(slug=slug, version=version, kind="rule", spec={"type": "json"})


def test_select_version_newest_pinned_unknown_and_other_kinds() -> None:
    versions = [rule("a", 1), rule("a", 2)]
    assert select_version(CriterionRef("a"), versions, "rule") == rule("a", 2)
    assert select_version(CriterionRef("a", 1), versions, "rule") == rule("a", 1)
    assert select_version(CriterionRef("a"), versions, "llm_judge") is None
    with pytest.raises(UnknownCriterionError, match="a@v1, a@v2"):
        select_version(CriterionRef("a", 3), versions, "rule")


class Counting(InMemoryDefinitions):
    def __init__(self, definitions: Sequence[CriterionDefinition]) -> None:
        super().__init__(definitions)
        self.calls = 0

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        self.calls += 1
        return await super().criterion_versions(slug)


async def test_the_cache_answers_within_its_ttl_including_for_unknown_slugs() -> None:
    now = [0.0]
    source = Counting([rule("a", 1)])
    cached = CachedDefinitions(source, ttl_s=2.0, clock=lambda: now[0])
    for _ in range(3):
        assert [d.id for d in await cached.criterion_versions("a")] == ["a@v1"]
        assert list(await cached.criterion_versions("some-reward-model")) == []
    assert source.calls == 2
    source.add(rule("a", 2))  # written elsewhere: seen once the TTL has passed
    assert [d.id for d in await cached.criterion_versions("a")] == ["a@v1"]
    now[0] = 2.5
    assert [d.id for d in await cached.criterion_versions("a")] == ["a@v1", "a@v2"]
    source.add(rule("a", 3))
    cached.forget("a")  # written here: seen at once
    assert [d.id for d in await cached.criterion_versions("a")][-1] == "a@v3"


async def test_the_cache_is_bounded() -> None:
    source = Counting([])
    cached = CachedDefinitions(source, max_slugs=2, clock=lambda: 0.0)
    for slug in ("a", "b", "c", "a"):
        await cached.criterion_versions(slug)
    assert source.calls == 4  # "a" was evicted by "c"


class Gated(Counting):
    """A source whose loads wait for `gate`."""

    def __init__(self, definitions: Sequence[CriterionDefinition]) -> None:
        super().__init__(definitions)
        self.gate = asyncio.Event()

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        self.calls += 1
        await self.gate.wait()
        return await InMemoryDefinitions.criterion_versions(self, slug)


async def test_concurrent_misses_share_one_load() -> None:
    source = Gated([rule("a", 1)])
    cached = CachedDefinitions(source)
    calls = [asyncio.ensure_future(cached.criterion_versions("a")) for _ in range(10)]
    await asyncio.sleep(0)
    source.gate.set()
    assert [[d.id for d in got] for got in await asyncio.gather(*calls)] == [["a@v1"]] * 10
    assert source.calls == 1


async def test_a_cancelled_load_does_not_fail_the_requests_waiting_on_it() -> None:
    source = Gated([rule("a", 1)])
    cached = CachedDefinitions(source)
    loader = asyncio.ensure_future(cached.criterion_versions("a"))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(cached.criterion_versions("a"))
    await asyncio.sleep(0)
    loader.cancel()
    await asyncio.sleep(0)
    source.gate.set()
    assert [d.id for d in await waiter] == ["a@v1"]  # it loaded afresh
    assert loader.cancelled() and source.calls == 2


async def test_a_failed_load_fails_its_waiters_and_the_next_call_tries_again() -> None:
    class Failing(Gated):
        async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
            self.calls += 1
            await self.gate.wait()
            if self.calls == 1:
                raise RuntimeError("store down")
            return await InMemoryDefinitions.criterion_versions(self, slug)

    source = Failing([rule("a", 1)])
    cached = CachedDefinitions(source)
    calls = [asyncio.ensure_future(cached.criterion_versions("a")) for _ in range(3)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert [d.id for d in await cached.criterion_versions("a")] == ["a@v1"] and source.calls == 2


async def test_forget_during_a_load_keeps_what_it_read_out_of_the_cache() -> None:
    source = Gated([rule("a", 1)])
    cached = CachedDefinitions(source)
    old = asyncio.ensure_future(cached.criterion_versions("a"))
    await asyncio.sleep(0)
    source.add(rule("a", 2))  # a local write the running load may have missed
    cached.forget("a")
    source.gate.set()
    await old
    assert [d.id for d in await cached.criterion_versions("a")] == ["a@v1", "a@v2"]
    assert source.calls == 2  # the load that started before the write was not cached
