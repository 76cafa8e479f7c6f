"""The narrow interface between the core store (gateway/store/core.py) and an SQL dialect (sqlite.py, postgres.py):
async methods that take values the core has already checked, stamped and encoded (ids, UTC datetimes, JSON text),
and hand back records. A dialect adds SQL, its connection handling and its error mapping; nothing else.
Imports only the stdlib, gateway.protocol and gateway.store.records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from gateway.protocol import CriterionDefinition
from gateway.store.records import DatasetRecord, EntryRecord, JobRecord, LogRecord


class LogRow(NamedTuple):
    """A new log's row, in rows.LOG_COLUMNS order; JSON columns as text."""

    id: str
    created_at: datetime
    model: str
    request: str
    upstream_ms: float | None
    scoring_ms: float | None
    total_ms: float | None
    metadata: str
    criteria_versions: str
    completion_id: str | None
    cache_hit: bool
    budget: str | None


class CandidateRow(NamedTuple):
    """A new candidate's row, in rows.CANDIDATE_COLUMNS order after log_id; JSON columns as text."""

    idx: int
    message: str | None
    status: str
    finish_reason: str | None
    error: str | None
    score: float | None
    rank: int | None
    criteria_results: str


class EntryRow(NamedTuple):
    """A new dataset entry; `pair` as JSON text."""

    id: str
    split: str
    source: str
    source_ref: str | None
    pair: str


class JobRow(NamedTuple):
    """A new job's row, in rows.JOB_COLUMNS order; JSON columns as text."""

    id: str
    slug: str
    dataset_id: str
    base_model: str
    hyperparameters: str
    data_path: str
    created_at: datetime
    updated_at: datetime
    state: str
    error: str | None
    progress: str | None
    metrics: str | None
    reward_stats: str | None
    version: str | None
    resumed: int
    kind: str


@dataclass(frozen=True)
class LogFilter:
    """A checked LogQuery plus the keyset position: every condition given must hold."""

    metadata: Mapping[str, str]
    metadata_json: str  # the same pairs as JSON text (Postgres matches them by containment)
    model: str | None
    since: datetime | None  # UTC, created_at >= since
    before: datetime | None  # UTC, created_at < before
    after: tuple[datetime, str] | None  # (created_at, id) of the previous page's last log: only older ones
    completion_id: str | None = None


# Called by the dialect inside its write transaction, with what it read under the lock:
MetadataMerge = Callable[[Mapping[str, Any]], tuple[Mapping[str, str], str]]  # current -> (new, new as JSON)
VersionRule = Callable[[Sequence[CriterionDefinition]], int]  # the slug's versions -> the new version's number


class Dialect(Protocol):
    """One SQL dialect. Every write is one transaction; reads and write results come back as records. Lists come
    back in the store's orders, at most `limit` items: the core asks for one more than a page to know if another
    page follows. Raises the store's errors only (gateway.store.errors), mapped from its driver's by class."""

    # logs
    async def insert_log(self, log: LogRow, metadata: Mapping[str, str], candidates: Sequence[CandidateRow]) -> None:
        """The log and its candidates, all or nothing."""
        ...

    async def get_log(self, log_id: str) -> LogRecord: ...

    async def list_logs(self, where: LogFilter, limit: int) -> Sequence[LogRecord]:
        """Newest first (created_at, then id, descending)."""
        ...

    async def update_metadata(self, log_id: str, merge: MetadataMerge) -> LogRecord:
        """Read the log's metadata under a lock that keeps other writers out, write merge(current), return the log."""
        ...

    async def set_criterion_results(self, log_id: str, slug: str, results: Mapping[int, str]) -> None:
        """criteria_results[slug] = the JSON text, per candidate index, in one transaction."""
        ...

    # the response cache (JSON text under a key the caller derives)
    async def get_cached(self, key: str, now: datetime) -> str | None:
        """The value stored under `key` unless it expired at `now`."""
        ...

    async def put_cached(
        self, key: str, value: str, created_at: datetime, expires_at: datetime, max_entries: int
    ) -> None:
        """Store (or replace) `key` and, in the same transaction, drop the expired entries and the oldest ones
        beyond `max_entries`."""
        ...

    # criterion definitions
    async def insert_criterion(
        self, slug: str, kind: str, spec: str, description: str, created_at: datetime, version: VersionRule
    ) -> CriterionDefinition:
        """Read the slug's versions and insert version(versions) under one lock per slug; the row written."""
        ...

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]: ...

    async def list_criteria(self) -> Sequence[CriterionDefinition]: ...

    async def set_alignment(self, slug: str, version: int, report: str) -> CriterionDefinition: ...

    # datasets: `ref` is an id or a name
    async def create_dataset(
        self, dataset_id: str, name: str, description: str, created_at: datetime
    ) -> DatasetRecord | None:
        """The new dataset; None when the name is taken (the unique name decides races)."""
        ...

    async def get_dataset(self, ref: str) -> DatasetRecord: ...

    async def list_datasets(self) -> Sequence[DatasetRecord]: ...

    async def delete_dataset(self, ref: str) -> str: ...

    async def insert_entries(
        self, ref: str, entries: Sequence[EntryRow], created_at: datetime
    ) -> tuple[DatasetRecord, tuple[str, ...]]:
        """All in one transaction, in order; (the dataset after it, source_refs of "log" entries it held)."""
        ...

    async def list_entries(
        self, ref: str, after: int, split: str | None, limit: int
    ) -> Sequence[tuple[int, EntryRecord]]:
        """(insertion number, entry) of the entries after `after`, in insertion order."""
        ...

    async def delete_entry(self, ref: str, entry_id: str) -> None: ...

    # training jobs
    async def insert_job(self, job: JobRow) -> None: ...

    async def get_job(self, job_id: str) -> JobRecord: ...

    async def list_jobs(self, limit: int) -> Sequence[JobRecord]: ...

    async def update_job(self, job_id: str, changes: Mapping[str, Any], updated_at: datetime) -> JobRecord:
        """`changes`: JOB_FIELDS names (checked, so safe to splice into SQL) -> values, JOB_JSON_FIELDS as text."""
        ...

    async def delete_jobs(self, slug: str) -> int:
        """Delete every job of `slug`; how many there were."""
        ...

    async def aclose(self) -> None:
        """Idempotent; calls already running finish first, later ones raise StoreClosedError."""
        ...
