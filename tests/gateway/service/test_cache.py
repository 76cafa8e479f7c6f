"""The response cache's key and its failure rule (gateway/service/cache.py): everything that can change an answer
changes the key (the body's fields, n, each criterion's resolved version and weight), what cannot does not (key
order, stream, stream_options, user), and a store that fails makes a miss, never a failed request."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.metrics import GatewayMetrics
from gateway.service.cache import ResponseCache, cache_key
from gateway.store import StoreBusyError

pytestmark = pytest.mark.anyio
BODY: dict[str, Any] = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "Count to 10"}], "n": 5}
RM = [("support-rm", "v1", 1.0)]


def test_what_changes_the_answer_changes_the_key() -> None:
    key = cache_key(BODY, RM)
    changed = [
        cache_key({**BODY, "n": 4}, RM),
        cache_key({**BODY, "temperature": 0.2}, RM),
        cache_key({**BODY, "seed": 1}, RM),
        cache_key({**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}, RM),
        cache_key({**BODY, "messages": [{"role": "user", "content": "Count to 11"}]}, RM),
        cache_key({**BODY, "model": "openai:gpt-4o"}, RM),
        cache_key(BODY, [("support-rm", "v2", 1.0)]),  # a new version of the same slug: a miss, not a stale ranking
        cache_key(BODY, [("support-rm", "v1", 2.0)]),
        cache_key(BODY, [*RM, ("tone", "v1", 1.0)]),
        cache_key(BODY),  # the same body without criteria: the pass-through answer
    ]
    assert len({key, *changed}) == len(changed) + 1


def test_what_cannot_change_the_answer_keeps_the_key() -> None:
    key = cache_key(BODY, RM)
    reordered = dict(reversed(list(BODY.items())))
    assert cache_key(reordered, RM) == key
    assert cache_key({**BODY, "stream": True, "stream_options": {"include_usage": True}, "user": "u-1"}, RM) == key


class BrokenStore:
    async def cached_response(self, key: str) -> dict[str, Any] | None:
        raise StoreBusyError("locked")

    async def cache_response(self, key: str, value: Any, *, ttl_s: float, max_entries: int) -> None:
        raise StoreBusyError("locked")


async def test_a_failing_store_is_a_miss_and_a_skipped_write() -> None:
    metrics = GatewayMetrics()
    cache = ResponseCache(BrokenStore(), ttl_s=60, max_entries=10, metrics=metrics)  # type: ignore[arg-type]
    assert await cache.get("k") is None
    await cache.put("k", {"id": "x"})
    assert metrics.registry.get_sample_value("rewardgate_cache_lookups_total", {"outcome": "miss"}) == 1
    assert metrics.registry.get_sample_value("rewardgate_cache_writes_total") == 0
