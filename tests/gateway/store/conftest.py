"""The store tests' shared helpers (T0, REQUEST, ok/failed candidates, add, all_logs, count_rows, pair) and the
`store` fixture: a store on each backend (`store_url`, tests/gateway/conftest.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.store import MAX_PAGE, CandidateRecord, Latencies, LogQuery, LogRecord, LogStore, open_store

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


REQUEST = {
    "model": "openai:gpt-4o-mini",
    "n": 3,
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
}


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[LogStore]:
    s = await open_store(store_url)
    yield s
    await s.aclose()


def ok(index: int, score: float, rank: int | None = None, text: str | None = None) -> CandidateRecord:
    message = {"role": "assistant", "content": text or f"answer {index}", "refusal": None}
    result = {"status": "success", "score": score, "explanation": "fine", "version": "v3"}
    return CandidateRecord(index, message, "ok", "stop", None, score, rank, {"support-rm": result})


def failed(index: int, score: float | None = None) -> CandidateRecord:
    return CandidateRecord(index, None, "error", None, "upstream timed out", score=score)


async def add(
    s: LogStore,
    at: datetime | None = None,
    metadata: dict[str, str] | None = None,
    model: str = "openai:gpt-4o-mini",
    candidates: list[CandidateRecord] | None = None,
    request: dict[str, Any] | None = None,
) -> LogRecord:
    return await s.create_log(
        model=model,
        request=request or REQUEST,
        candidates=[ok(0, 0.9, 0), failed(1), ok(2, 0.5, 1)] if candidates is None else candidates,
        latencies=Latencies(upstream_ms=120.0, scoring_ms=30.5, total_ms=160.25),
        metadata=metadata,
        criteria_versions={"support-rm": "v3"},
        created_at=at,
    )


async def all_logs(s: LogStore, query: LogQuery | None = None) -> list[LogRecord]:
    return list((await s.list_logs(query, limit=MAX_PAGE)).logs)


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def pair(i: int, split: str = "TRAIN") -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"good {i}"}],
        "rejected_message": {"role": "assistant", "content": f"bad {i}"},
        "split": split,
    }
