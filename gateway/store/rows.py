"""How a selected row becomes a record, for both dialects: the column lists they select (the schemas match step for
step, gateway/store/migrations.py) beside the one reader that takes those columns by position. A dialect says only
how its columns come back: JSON as text (SQLite) or as values (Postgres JSONB), times as text or as datetimes.
Imports only the stdlib, gateway.protocol and gateway.store.records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.protocol import CriterionDefinition
from gateway.store.records import (
    CandidateRecord,
    DatasetRecord,
    EntryRecord,
    JobRecord,
    Latencies,
    LogRecord,
    format_time,
)

LOG_COLUMNS = ("id, created_at, model, request, upstream_ms, scoring_ms, total_ms, metadata, criteria_versions,"
               " completion_id, cache_hit, budget")  # fmt: skip
CANDIDATE_COLUMNS = "log_id, idx, message, status, finish_reason, error, score, rank, criteria_results"
CANDIDATE_ORDER = "rank IS NULL, rank, idx"  # records.candidate_order, in SQL
CRITERION_COLUMNS = "slug, version, kind, spec, description, created_at, alignment"
DATASET_SELECT = """SELECT d.id, d.name, d.description, d.created_at,
    (SELECT count(*) FROM dataset_entries e WHERE e.dataset_id = d.id AND e.split = 'TRAIN'),
    (SELECT count(*) FROM dataset_entries e WHERE e.dataset_id = d.id AND e.split = 'TEST')
    FROM datasets d"""
ENTRY_COLUMNS = "seq, id, dataset_id, created_at, split, source, source_ref, pair"
JOB_COLUMNS = ("id, slug, dataset_id, base_model, hyperparameters, data_path, created_at, updated_at, state, error,"
               " progress, metrics, reward_stats, version, resumed, kind")  # fmt: skip


@dataclass(frozen=True)
class RowReader:
    """Records from one dialect's rows. `json` reads a JSON column (NULL stays None); `time`, a time column as an
    aware UTC datetime."""

    json: Callable[[Any], Any]
    time: Callable[[Any], datetime]

    def logs(self, rows: Sequence[Any], candidate_rows: Sequence[Any]) -> list[LogRecord]:
        """Rows of LOG_COLUMNS, with all their candidates' rows (CANDIDATE_COLUMNS, in CANDIDATE_ORDER)."""
        candidates: dict[str, list[CandidateRecord]] = {row[0]: [] for row in rows}
        for r in candidate_rows:
            candidates[r[0]].append(
                CandidateRecord(r[1], self.json(r[2]), r[3], r[4], r[5], r[6], r[7], self.json(r[8]))
            )
        return [
            LogRecord(
                r[0],
                self.time(r[1]),
                r[2],
                self.json(r[3]),
                Latencies(r[4], r[5], r[6]),
                self.json(r[7]),
                self.json(r[8]),
                tuple(candidates[r[0]]),
                r[9],
                bool(r[10]),
                self.json(r[11]),
            )
            for r in rows
        ]

    def criteria(self, rows: Sequence[Any]) -> list[CriterionDefinition]:
        """Rows of CRITERION_COLUMNS; created_at as the record's fixed-width UTC text."""
        return [
            CriterionDefinition(
                slug=r[0],
                version=r[1],
                kind=r[2],
                spec=self.json(r[3]),
                description=r[4],
                created_at=format_time(self.time(r[5])),
                alignment=self.json(r[6]),
            )
            for r in rows
        ]

    def dataset(self, r: Any) -> DatasetRecord:
        """A row of DATASET_SELECT."""
        return DatasetRecord(r[0], r[1], r[2], self.time(r[3]), r[4], r[5])

    def entry(self, r: Any) -> tuple[int, EntryRecord]:
        """A row of ENTRY_COLUMNS: (its insertion number, the entry)."""
        return r[0], EntryRecord(r[1], r[2], self.time(r[3]), r[4], r[5], r[6], self.json(r[7]))

    def job(self, r: Any) -> JobRecord:
        """A row of JOB_COLUMNS."""
        return JobRecord(r[0], r[1], r[2], r[3], self.json(r[4]), r[5], self.time(r[6]), self.time(r[7]), r[8],
                         r[9], self.json(r[10]), self.json(r[11]), self.json(r[12]), r[13], r[14], r[15])  # fmt: skip
