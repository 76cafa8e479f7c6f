"""Test doubles for the reward server: a gated fake scorer and a fake token engine (no torch)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.formats import Message


class FakeScorer:
    """Scores a row as the sum of its ids; records every batch; can hold batches until `gate` opens."""

    def __init__(self, *, gated: bool = False, fail_on: int | None = None) -> None:
        self.batches: list[list[tuple[int, ...]]] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_on = fail_on  # a row containing this id makes its batch fail

    async def __call__(self, batch: Sequence[tuple[int, ...]]) -> list[float]:
        self.batches.append(list(batch))
        self.entered.set()
        await self.gate.wait()
        if self.fail_on is not None and any(self.fail_on in row for row in batch):
            raise RuntimeError("boom")
        return [float(sum(row)) for row in batch]

    def rows(self) -> list[tuple[int, ...]]:
        return [row for batch in self.batches for row in batch]


class FakeEngine:
    """A TokenEngine: a response of text T renders to the ids of its characters; scores via FakeScorer."""

    def __init__(self, scorer: FakeScorer | None = None, memory_bytes: int = 100) -> None:
        self.scorer = scorer or FakeScorer()
        self.memory_bytes = memory_bytes
        self.closed = False

    def render(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[tuple[int, ...]]:
        return [tuple(ord(c) for c in conv[-1].content) for conv in conversations]

    async def score_tokens(self, batch: Sequence[tuple[int, ...]]) -> list[float]:
        return await self.scorer(batch)

    def close(self) -> None:
        self.closed = True


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Poll `condition()` with a deadline (yielding to the loop), never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)
