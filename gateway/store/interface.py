"""LogStore: what the gateway needs from persistence (logs, criterion definitions, datasets, training jobs). One
class implements it, gateway.store.core.Store, over either SQL dialect. Imports only the stdlib, gateway.protocol
and gateway.store.records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from gateway.protocol import CriterionDefinition
from gateway.store.records import (
    AddedEntries,
    CandidateRecord,
    DatasetRecord,
    EntryPage,
    JobRecord,
    Latencies,
    LogPage,
    LogQuery,
    LogRecord,
    NewEntry,
)


class LogStore(Protocol):
    """What the gateway needs from persistence: gateway.store.core.Store over SQLite or Postgres, chosen by
    open_store's URL."""

    async def create_log(
        self,
        *,
        model: str,
        request: Mapping[str, Any],
        candidates: Sequence[CandidateRecord],
        latencies: Latencies,
        metadata: Mapping[str, str] | None = None,
        criteria_versions: Mapping[str, str] | None = None,
        created_at: datetime | None = None,
        completion_id: str | None = None,
        cache_hit: bool = False,
        budget: Mapping[str, Any] | None = None,
    ) -> LogRecord: ...

    async def get_log(self, log_id: str) -> LogRecord: ...

    async def list_logs(
        self, query: LogQuery | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> LogPage: ...

    async def update_metadata(self, log_id: str, patch: Mapping[str, str | None]) -> LogRecord: ...

    async def update_metadata_where(self, query: LogQuery, patch: Mapping[str, str | None]) -> int:
        """update_metadata on every log matching `query`; how many matched."""
        ...

    async def add_criterion_results(self, log_id: str, slug: str, results: Mapping[int, Mapping[str, Any]]) -> None:
        """Set criteria_results[slug] of the log's candidates (by candidate index) in one transaction; the
        combined score and rank stay those of the request (offline scoring, `rewardgate eval logs`)."""
        ...

    def export_jsonl(self, query: LogQuery | None = None) -> AsyncIterator[str]: ...

    def export_pairs(self, query: LogQuery | None = None) -> AsyncIterator[str]: ...

    # the response cache (shared by every replica on the store)

    async def cached_response(self, key: str) -> dict[str, Any] | None:
        """The completion cached under `key`; None when absent or expired."""
        ...

    async def cache_response(self, key: str, value: Mapping[str, Any], *, ttl_s: float, max_entries: int) -> None:
        """Keep `value` under `key` for `ttl_s` seconds, evicting expired and then the oldest entries beyond
        `max_entries`."""
        ...

    # criterion definitions (also a gateway.criteria.definitions.DefinitionSource)

    async def create_criterion(
        self, *, slug: str, kind: str, spec: Mapping[str, Any], description: str = "", new_version: bool = False
    ) -> CriterionDefinition:
        """Store the next version of `slug` (v1 for a new slug). new_version=False: the slug must be new;
        True: the slug must exist, with the same kind. Raises CriterionExistsError / CriterionNotFoundError."""
        ...

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]: ...

    async def list_criteria(self) -> Sequence[CriterionDefinition]:
        """Every version of every criterion, by slug then version."""
        ...

    async def set_alignment(self, slug: str, version: int, report: Mapping[str, Any]) -> CriterionDefinition: ...

    # datasets: wherever a method takes `dataset`, the id or the name works (DatasetNotFoundError otherwise)

    async def create_dataset(self, *, name: str, description: str = "", exist_ok: bool = False) -> DatasetRecord:
        """A new, empty dataset; DatasetExistsError when the name is taken, unless exist_ok (then that one)."""
        ...

    async def get_dataset(self, dataset: str) -> DatasetRecord: ...

    async def list_datasets(self) -> Sequence[DatasetRecord]:
        """Newest first."""
        ...

    async def delete_dataset(self, dataset: str) -> str:
        """Delete it and its entries; returns its id."""
        ...

    async def add_entries(self, dataset: str, entries: Sequence[NewEntry]) -> AddedEntries:
        """All in one transaction; a "log" entry whose log is already in the dataset is skipped, not added twice."""
        ...

    async def list_entries(
        self, dataset: str, *, limit: int = 50, cursor: str | None = None, split: str | None = None
    ) -> EntryPage: ...

    async def delete_entry(self, dataset: str, entry_id: str) -> None: ...

    # training jobs

    async def create_job(self, job: JobRecord) -> JobRecord: ...

    async def get_job(self, job_id: str) -> JobRecord: ...

    async def list_jobs(self, *, limit: int = 100) -> Sequence[JobRecord]:
        """Newest first."""
        ...

    async def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        """Set some of JOB_FIELDS (and updated_at); JobNotFoundError for an unknown id."""
        ...

    async def delete_jobs(self, slug: str) -> int:
        """Delete every training job of `slug` (its model's history); how many there were."""
        ...

    async def aclose(self) -> None:
        """Close the connection(s); calls already running finish first. Idempotent; later calls raise
        StoreClosedError."""
        ...
