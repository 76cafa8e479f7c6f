"""Store: the one LogStore, over an SQL dialect (gateway/store/dialect.py). Every check, id, time stamp, candidate
order, JSON encoding, cursor and version rule happens here, once, so both dialects take the same values and answer
the same errors; the exports are built on list_logs. Imports only the stdlib, gateway.formats, gateway.protocol and
the store's own modules (never a dialect: open_store picks one).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from gateway.formats import SPLITS
from gateway.protocol import CriterionDefinition, Log, render
from gateway.store.codec import (
    candidate_row,
    decode_entry_cursor,
    decode_log_cursor,
    dump_json,
    dump_json_or_none,
    encode_entry_cursor,
    encode_log_cursor,
    log_row,
)
from gateway.store.dialect import Dialect, EntryRow, JobRow, LogFilter
from gateway.store.errors import (
    CriterionExistsError,
    CriterionNotFoundError,
    DatasetExistsError,
    InvalidInputError,
    MetadataError,
)
from gateway.store.ids import new_id, new_log_id
from gateway.store.metadata import merge_metadata, validate_metadata
from gateway.store.pairs import preference_pair
from gateway.store.records import (
    ENTRY_SOURCES,
    JOB_FIELDS,
    JOB_JSON_FIELDS,
    MAX_PAGE,
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
    as_utc,
    candidate_order,
    utcnow,
)

T = TypeVar("T")
EXPORT_BATCH = 200  # logs read per call while an export streams


def next_criterion_version(slug: str, kind: str, existing: Sequence[CriterionDefinition], new_version: bool) -> int:
    """The version a create_criterion call takes, given the slug's versions read under the dialect's lock:
    v1 for a new slug, the next one with `new_version`, else the errors LogStore documents."""
    if existing and not new_version:
        raise CriterionExistsError(f"criterion {slug!r} exists (v1..v{existing[-1].version}): add a version")
    if not existing and new_version:
        raise CriterionNotFoundError(slug)
    if existing and existing[-1].kind != kind:
        raise CriterionExistsError(f"criterion {slug!r} is a {existing[-1].kind} criterion, not {kind}")
    return existing[-1].version + 1 if existing else 1


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def _page(items: Sequence[T], limit: int, cursor: Callable[[T], str]) -> tuple[tuple[T, ...], str | None]:
    """The first `limit` of `items` (read as limit + 1, so the extra one says a page follows) and the cursor
    after them; None on the last page."""
    if len(items) <= limit:
        return tuple(items), None
    return tuple(items[:limit]), cursor(items[limit - 1])


def _entry_row(i: int, entry: NewEntry, created_at: datetime) -> EntryRow:
    split = entry.pair.get("split")
    if split not in SPLITS or entry.source not in ENTRY_SOURCES:
        raise InvalidInputError(f"entries[{i}]: split {split!r} / source {entry.source!r} not allowed")
    pair = dump_json(dict(entry.pair), f"entries[{i}].pair")
    return EntryRow(new_id("dse", created_at), str(split), entry.source, entry.source_ref, pair)


def _job_row(job: JobRecord) -> JobRow:
    def text(name: str) -> str | None:  # one of JOB_JSON_FIELDS
        return dump_json_or_none(getattr(job, name), f"job {name}")

    return JobRow(
        id=job.id,
        slug=job.slug,
        dataset_id=job.dataset_id,
        base_model=job.base_model,
        hyperparameters=dump_json(dict(job.hyperparameters), "job hyperparameters"),
        data_path=job.data_path,
        created_at=as_utc(job.created_at, "created_at"),
        updated_at=as_utc(job.updated_at, "updated_at"),
        state=job.state,
        error=job.error,
        progress=text("progress"),
        metrics=text("metrics"),
        reward_stats=text("reward_stats"),
        version=job.version,
        resumed=job.resumed,
        kind=job.kind,
    )


class Store:
    """LogStore over `dialect`; `clock` dates what the store creates. Build it with gateway.store.open_store."""

    def __init__(self, dialect: Dialect, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.dialect = dialect
        self._clock = clock

    def _now(self, what: str) -> datetime:
        return as_utc(self._clock(), what)

    # ---------------------------------------------------------------- logs

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
    ) -> LogRecord:
        """Store one log with all its candidates in one transaction; the record carries the new id."""
        when = as_utc(created_at, "created_at") if created_at is not None else self._now("created_at")
        for c in candidates:
            if c.score is not None and not math.isfinite(c.score):
                raise InvalidInputError(f"candidates[{c.index}].score: must be a finite number, got {c.score}")
        log = LogRecord(
            id=new_log_id(when),
            created_at=when,
            model=model,
            request=dict(request),
            latencies=latencies,
            metadata=validate_metadata(metadata or {}),
            criteria_versions=dict(criteria_versions or {}),
            candidates=tuple(sorted(candidates, key=candidate_order)),
            completion_id=completion_id,
            cache_hit=cache_hit,
            budget=None if budget is None else dict(budget),
        )
        await self.dialect.insert_log(log_row(log), log.metadata, [candidate_row(c) for c in log.candidates])
        return log

    async def get_log(self, log_id: str) -> LogRecord:
        return await self.dialect.get_log(log_id)

    async def list_logs(self, query: LogQuery | None = None, *, limit: int = 50, cursor: str | None = None) -> LogPage:
        """One page of the logs matching `query`, newest first; `cursor` is the previous page's next_cursor."""
        _check_limit(limit)
        after = decode_log_cursor(cursor) if cursor is not None else None
        q = query or LogQuery()
        since, before = (None if t is None else as_utc(t, "query") for t in (q.since, q.before))
        metadata = dict(q.metadata)
        where = LogFilter(
            metadata, dump_json(metadata, "query.metadata"), q.model, since, before, after, q.completion_id
        )
        logs = await self.dialect.list_logs(where, limit + 1)
        return LogPage(*_page(logs, limit, lambda log: encode_log_cursor(log.created_at, log.id)))

    async def update_metadata(self, log_id: str, patch: Mapping[str, str | None]) -> LogRecord:
        """Merge `patch` into the log's metadata (a None value removes that key); validated like create_log."""
        if not isinstance(patch, Mapping):
            raise MetadataError(None, f"must be an object of strings, got {type(patch).__name__}")
        frozen = dict(patch)

        def merge(current: Mapping[str, Any]) -> tuple[Mapping[str, str], str]:  # under the dialect's row lock
            merged = merge_metadata(current, frozen)
            return merged, dump_json(merged, "metadata")

        return await self.dialect.update_metadata(log_id, merge)

    async def update_metadata_where(self, query: LogQuery, patch: Mapping[str, str | None]) -> int:
        """Merge `patch` into every log matching `query` (as update_metadata does for one); how many matched. The
        matches are read first, so a patch that changes the filtered key still reaches each log once. Each log is
        its own transaction: a patch that one log's metadata refuses (too many keys) stops there."""
        ids = [log.id async for log in self._all_logs(query)]
        for log_id in ids:
            await self.update_metadata(log_id, patch)
        return len(ids)

    async def add_criterion_results(self, log_id: str, slug: str, results: Mapping[int, Mapping[str, Any]]) -> None:
        """See LogStore.add_criterion_results."""
        texts = {index: dump_json(dict(result), f"criteria_results[{slug!r}]") for index, result in results.items()}
        await self.dialect.set_criterion_results(log_id, slug, texts)

    async def _all_logs(self, query: LogQuery | None) -> AsyncIterator[LogRecord]:
        """Every log matching `query`, newest first, read a page at a time."""
        cursor = None
        while True:
            page = await self.list_logs(query, limit=EXPORT_BATCH, cursor=cursor)
            for log in page.logs:
                yield log
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def export_jsonl(self, query: LogQuery | None = None) -> AsyncIterator[str]:
        """The matching logs, newest first, one JSON object per "\\n"-terminated line."""
        async for log in self._all_logs(query):
            yield dump_json(render(Log, log), "log") + "\n"

    async def export_pairs(self, query: LogQuery | None = None) -> AsyncIterator[str]:
        """The matching logs as seed-format preference pairs (see preference_pair); logs with none are skipped."""
        async for log in self._all_logs(query):
            pair = preference_pair(log)
            if pair is not None:
                yield dump_json(pair, "pair") + "\n"

    # ---------------------------------------------------------------- the response cache

    async def cached_response(self, key: str) -> dict[str, Any] | None:
        """The completion cached under `key`, unless it expired."""
        text = await self.dialect.get_cached(key, self._now("now"))
        return None if text is None else dict(json.loads(text))

    async def cache_response(self, key: str, value: Mapping[str, Any], *, ttl_s: float, max_entries: int) -> None:
        """Keep `value` under `key` for `ttl_s` seconds; beyond `max_entries` the oldest entries go first."""
        if not (math.isfinite(ttl_s) and ttl_s > 0) or max_entries < 1:
            raise InvalidInputError(f"cache ttl_s must be > 0 and max_entries >= 1, got {ttl_s}, {max_entries}")
        now = self._now("created_at")
        text = dump_json(dict(value), "cached response")
        await self.dialect.put_cached(key, text, now, now + timedelta(seconds=ttl_s), max_entries)

    # ---------------------------------------------------------------- criterion definitions

    async def create_criterion(
        self, *, slug: str, kind: str, spec: Mapping[str, Any], description: str = "", new_version: bool = False
    ) -> CriterionDefinition:
        """The next version of `slug`; see LogStore.create_criterion."""
        text = dump_json(dict(spec), "spec")
        when = self._now("created_at")

        def version(existing: Sequence[CriterionDefinition]) -> int:  # under the dialect's lock on the slug
            return next_criterion_version(slug, kind, existing, new_version)

        return await self.dialect.insert_criterion(slug, kind, text, description, when, version)

    async def criterion_versions(self, slug: str) -> Sequence[CriterionDefinition]:
        return await self.dialect.criterion_versions(slug)

    async def list_criteria(self) -> Sequence[CriterionDefinition]:
        return await self.dialect.list_criteria()

    async def set_alignment(self, slug: str, version: int, report: Mapping[str, Any]) -> CriterionDefinition:
        """Attach an alignment report to one version (the latest report replaces an earlier one)."""
        return await self.dialect.set_alignment(slug, version, dump_json(dict(report), "alignment"))

    # ---------------------------------------------------------------- datasets

    async def create_dataset(self, *, name: str, description: str = "", exist_ok: bool = False) -> DatasetRecord:
        when = self._now("created_at")
        created = await self.dialect.create_dataset(new_id("ds", when), name, description, when)
        if created is not None:
            return created
        if not exist_ok:
            raise DatasetExistsError(name)
        return await self.dialect.get_dataset(name)

    async def get_dataset(self, dataset: str) -> DatasetRecord:
        return await self.dialect.get_dataset(dataset)

    async def list_datasets(self) -> Sequence[DatasetRecord]:
        return await self.dialect.list_datasets()

    async def delete_dataset(self, dataset: str) -> str:
        return await self.dialect.delete_dataset(dataset)

    async def add_entries(self, dataset: str, entries: Sequence[NewEntry]) -> AddedEntries:
        """See LogStore.add_entries; every entry's pair must carry a TRAIN or TEST split."""
        when = self._now("created_at")
        rows = [_entry_row(i, entry, when) for i, entry in enumerate(entries)]
        record, duplicates = await self.dialect.insert_entries(dataset, rows, when)
        return AddedEntries(record, len(rows) - len(duplicates), duplicates)

    async def list_entries(
        self, dataset: str, *, limit: int = 50, cursor: str | None = None, split: str | None = None
    ) -> EntryPage:
        """One page of the dataset's entries in insertion order, optionally of one split."""
        _check_limit(limit)
        if split is not None and split not in SPLITS:
            raise InvalidInputError(f"split must be TRAIN or TEST, got {split!r}")
        after = decode_entry_cursor(cursor) if cursor is not None else 0
        numbered = await self.dialect.list_entries(dataset, after, split, limit + 1)
        page, next_cursor = _page(numbered, limit, lambda item: encode_entry_cursor(item[0]))
        return EntryPage(tuple(entry for _, entry in page), next_cursor)

    async def delete_entry(self, dataset: str, entry_id: str) -> None:
        await self.dialect.delete_entry(dataset, entry_id)

    # ---------------------------------------------------------------- training jobs

    async def create_job(self, job: JobRecord) -> JobRecord:
        await self.dialect.insert_job(_job_row(job))
        return job

    async def get_job(self, job_id: str) -> JobRecord:
        return await self.dialect.get_job(job_id)

    async def list_jobs(self, *, limit: int = 100) -> Sequence[JobRecord]:
        return await self.dialect.list_jobs(_check_limit(limit))

    async def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = sorted(set(changes) - set(JOB_FIELDS))
        if unknown:
            raise InvalidInputError(f"not a job field: {unknown[0]!r}")
        values = {k: dump_json_or_none(v, f"job {k}") if k in JOB_JSON_FIELDS else v for k, v in changes.items()}
        return await self.dialect.update_job(job_id, values, self._now("updated_at"))

    async def delete_jobs(self, slug: str) -> int:
        return await self.dialect.delete_jobs(slug)

    async def aclose(self) -> None:
        """Close the dialect's connections; calls already running finish first. Idempotent."""
        await self.dialect.aclose()
