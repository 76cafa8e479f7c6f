"""The core store (gateway/store/core.py) makes every check before it calls a dialect, so both dialects refuse the
same inputs with the same errors: each bad input goes to a Store whose (real) dialect records the calls it gets,
on each backend, and must be refused with none."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest

from gateway.store import (
    MAX_PAGE,
    CandidateRecord,
    InvalidInputError,
    JobRecord,
    LogQuery,
    NewEntry,
    Store,
    open_store,
)
from tests.gateway.store.conftest import T0, add, ok, pair

pytestmark = pytest.mark.anyio
NAIVE = datetime(2026, 1, 1)
NAN = float("nan")


class Recording:
    """A real dialect, recording the name of every method the core calls."""

    def __init__(self, dialect: Any) -> None:
        self.inner = dialect
        self.called: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.called.append(name)
            return method(*args, **kwargs)

        return call


def job(**changes: Any) -> JobRecord:
    fields = {"id": "job_1", "slug": "rm", "dataset_id": "ds_1", "base_model": "base", "hyperparameters": {}}
    return JobRecord(**{**fields, "data_path": "/d", "created_at": T0, "updated_at": T0, **changes})


Call = Callable[[Store], Awaitable[Any]]
BAD: dict[str, tuple[Call, str]] = {
    "naive created_at": (lambda s: add(s, at=NAIVE), "created_at: the datetime must be timezone-aware"),
    "NaN score": (lambda s: add(s, candidates=[ok(0, NAN)]), r"candidates\[0\].score: must be a finite number"),
    "metadata value": (lambda s: add(s, metadata={"k": 1}), r"metadata\['k'\]: value must be a string"),  # type: ignore[dict-item]
    "request not JSON": (lambda s: add(s, request={"messages": [], "x": {1}}), "request: not storable as JSON"),
    "message not JSON": (
        lambda s: add(s, candidates=[CandidateRecord(0, {"content": NAN})]),
        r"candidates\[0\].message: not storable",
    ),
    "page of 0 logs": (lambda s: s.list_logs(limit=0), "limit must be between 1 and 1000"),
    "page too long": (lambda s: s.list_logs(limit=MAX_PAGE + 1), "limit must be between 1 and 1000"),
    "log cursor": (lambda s: s.list_logs(cursor="bm9wZQ=="), "invalid cursor"),
    "naive since": (lambda s: s.list_logs(LogQuery(since=NAIVE)), "query: the datetime must be timezone-aware"),
    "patch not a map": (lambda s: s.update_metadata("log_x", ["a"]), "metadata: must be an object of strings"),  # type: ignore[arg-type]
    "result not JSON": (
        lambda s: s.add_criterion_results("log_x", "rm", {0: {"score": NAN}}),
        r"criteria_results\['rm'\]: not storable",
    ),
    "spec not JSON": (lambda s: s.create_criterion(slug="a", kind="rule", spec={"x": NAN}), "spec: not storable"),
    "report not JSON": (lambda s: s.set_alignment("a", 1, {"f1": NAN}), "alignment: not storable"),
    "entry split": (
        lambda s: s.add_entries("d", [NewEntry({**pair(1), "split": "DEV"})]),
        r"entries\[0\]: split 'DEV'",
    ),
    "entry source": (lambda s: s.add_entries("d", [NewEntry(pair(1), source="web")]), "source 'web' not allowed"),  # type: ignore[arg-type]
    "entry not JSON": (lambda s: s.add_entries("d", [NewEntry({**pair(1), "x": NAN})]), r"entries\[0\].pair"),
    "page of 0 entries": (lambda s: s.list_entries("d", limit=0), "limit must be between"),
    "entries of a split": (lambda s: s.list_entries("d", split="DEV"), "split must be TRAIN or TEST"),
    "entry cursor": (lambda s: s.list_entries("d", cursor="eHl6"), "invalid cursor"),
    "page of 0 jobs": (lambda s: s.list_jobs(limit=0), "limit must be between"),
    "job field": (lambda s: s.update_job("job_1", colour="red"), "not a job field: 'colour'"),
    "job progress": (lambda s: s.update_job("job_1", progress={"loss": NAN}), "job progress: not storable"),
    "naive job time": (lambda s: s.create_job(job(updated_at=NAIVE)), "updated_at: the datetime must be"),
    "job metrics": (lambda s: s.create_job(job(metrics={"a": NAN})), "job metrics: not storable"),
}


@pytest.fixture
async def recording(store_url: str) -> AsyncIterator[Recording]:
    real = await open_store(store_url)
    yield Recording(real.dialect)  # type: ignore[attr-defined]
    await real.aclose()


@pytest.mark.parametrize("case", list(BAD))
async def test_the_core_refuses_bad_input_before_calling_the_dialect(recording: Recording, case: str) -> None:
    call, message = BAD[case]
    with pytest.raises(InvalidInputError, match=message):
        await call(Store(recording))  # type: ignore[arg-type]
    assert recording.called == []


async def test_a_naive_clock_is_refused_before_calling_the_dialect(recording: Recording) -> None:
    store = Store(recording, clock=lambda: NAIVE)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="created_at: the datetime must be timezone-aware"):
        await store.create_dataset(name="d")
    with pytest.raises(InvalidInputError, match="updated_at: the datetime must be timezone-aware"):
        await store.update_job("job_1", state="ERROR")
    assert recording.called == []
