"""The response cache in the store, on both backends: a value comes back as it was written, expires after its TTL
(by the store's clock), a second write replaces the first, and beyond max_entries the oldest entries go first. Two
stores on one database (two replicas) share it."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from gateway.store import InvalidInputError, open_store
from tests.gateway.store.conftest import T0

pytestmark = pytest.mark.anyio
COMPLETION = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Ünï 1"}}]}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def test_a_cached_value_comes_back_until_it_expires(store_url: str) -> None:
    clock = Clock()
    store = await open_store(store_url, clock=clock)
    try:
        assert await store.cached_response("k1") is None
        await store.cache_response("k1", COMPLETION, ttl_s=60, max_entries=10)
        assert await store.cached_response("k1") == COMPLETION
        assert list(await store.cached_response("k1") or {}) == ["id", "choices"]  # key order kept (no JSONB)
        clock.now = T0 + timedelta(seconds=59)
        assert await store.cached_response("k1") == COMPLETION
        clock.now = T0 + timedelta(seconds=60)
        assert await store.cached_response("k1") is None
        await store.cache_response("k1", {**COMPLETION, "id": "chatcmpl-2"}, ttl_s=60, max_entries=10)
        assert (await store.cached_response("k1") or {})["id"] == "chatcmpl-2"  # rewritten, alive again
    finally:
        await store.aclose()


async def test_the_oldest_entries_go_beyond_max_entries_and_replicas_share_the_cache(store_url: str) -> None:
    clock = Clock()
    one, two = await open_store(store_url, clock=clock), await open_store(store_url, clock=clock)
    try:
        for i in range(4):
            clock.now = T0 + timedelta(seconds=i)
            await (one if i % 2 else two).cache_response(f"k{i}", {"i": i}, ttl_s=3600, max_entries=3)
        assert [await two.cached_response(f"k{i}") for i in range(4)] == [None, {"i": 1}, {"i": 2}, {"i": 3}]
        clock.now = T0 + timedelta(hours=2)  # everything expired: the next write sweeps it
        await one.cache_response("k9", {"i": 9}, ttl_s=60, max_entries=3)
        assert [await one.cached_response(k) for k in ("k1", "k9")] == [None, {"i": 9}]
    finally:
        await one.aclose()
        await two.aclose()


async def test_bad_cache_settings_are_refused(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        for ttl_s, entries in ((0, 10), (float("nan"), 10), (60, 0)):
            with pytest.raises(InvalidInputError):
                await store.cache_response("k", {}, ttl_s=ttl_s, max_entries=entries)
    finally:
        await store.aclose()
