"""The response cache behind `op-cache` (OpenPipe's header): the key of a request, and reading and writing
completions through the log store, so every replica on one store shares them, with hit/miss metrics. Used by the
chat service only. Must not import starlette or gateway.api.

The key is a sha256 of everything that can change the answer: the body sent upstream (model, messages, tools,
tool_choice, n, temperature, top_p, seed, max_tokens, response_format, stop, vendor fields...) with its keys
sorted, minus what cannot change it (`stream`, `stream_options`, `user`; `store` and `metadata` never reach the
upstream body), plus for best-of-N every criterion's slug, RESOLVED version and weight. So a new version of a reward
model, another `n` or another weight is a miss, never a stale ranking (OpenPipe's own cache ignores `n`).

The cache never fails a request: a store error on a read is a miss, on a write it is logged and the answer goes
back anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.metrics import GatewayMetrics
from gateway.store import LogStore, StoreError

logger = logging.getLogger(__name__)
UNKEYED = frozenset({"stream", "stream_options", "user"})  # body fields that cannot change the answer

CriterionKey = tuple[str, str | None, float]  # (slug, resolved version, weight)


def cache_key(upstream: Mapping[str, Any], criteria: Sequence[CriterionKey] = ()) -> str:
    """The key of a request: its upstream body (minus UNKEYED) and, for best-of-N, its resolved criteria."""
    body = {k: v for k, v in upstream.items() if k not in UNKEYED}
    material = {"body": body, "criteria": [list(c) for c in criteria]}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """Completions by key in the log store, for `ttl_s` seconds, at most `max_entries` of them."""

    def __init__(self, store: LogStore, *, ttl_s: float, max_entries: int, metrics: GatewayMetrics) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._metrics = metrics

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = await self._store.cached_response(key)
        except StoreError as exc:
            logger.warning("response cache read failed, answering as a miss: %s", exc)
            value = None
        self._metrics.record_cache_lookup(hit=value is not None)
        return value

    async def put(self, key: str, value: Mapping[str, Any]) -> None:
        try:
            await self._store.cache_response(key, value, ttl_s=self._ttl_s, max_entries=self._max_entries)
        except StoreError as exc:
            logger.warning("response cache write failed (the answer still goes back): %s", exc)
            return
        self._metrics.cache_writes.inc()
