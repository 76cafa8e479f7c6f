"""The store's records (frozen dataclasses: what goes in and comes back), the query and page shapes, and the time
helpers both dialects and the cursors share; they render to JSON through gateway.protocol. Imports only the stdlib,
gateway.protocol and gateway.store.errors.

Times are timezone-aware UTC datetimes in every record; as text they are fixed-width UTC (TIME_FORMAT), which sorts
as text, in SQLite columns and in cursors alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gateway import protocol
from gateway.store.errors import InvalidInputError

MAX_PAGE = 1000
TIME_FORMAT = protocol.TIME_FORMAT  # the wire's too: cursors and rendered records agree


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime, what: str) -> datetime:
    """`value` in UTC; InvalidInputError naming `what` for a naive datetime (its zone would be a guess)."""
    if value.tzinfo is None:
        raise InvalidInputError(f"{what}: the datetime must be timezone-aware")
    return value.astimezone(UTC)


def format_time(value: datetime, what: str = "created_at") -> str:
    return as_utc(value, what).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The inverse of format_time; ValueError for any other text."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Latencies:
    upstream_ms: float | None = None
    scoring_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True)
class CandidateRecord:
    """One of the N candidates of a log, as the gateway passes it in and as it comes back."""

    index: int  # the provider's choice index
    message: dict[str, Any] | None  # the OpenAI assistant message; None when the provider failed
    status: Literal["ok", "error"] = "ok"
    finish_reason: str | None = None
    error: str | None = None  # why the provider failed (status "error")
    score: float | None = None  # the combined score over all criteria
    rank: int | None = None  # 0 = best
    # {slug: {"status":"success","score":..,"explanation":..,"version":..} | {"status":"error",...}}
    criteria_results: dict[str, Any] = field(default_factory=dict)


def candidate_order(candidate: CandidateRecord) -> tuple[bool, int, int]:
    """The order of a log's candidates: by rank, best first; unranked ones last, by index. The dialects' SQL
    (rows.CANDIDATE_ORDER) reads them back in this order."""
    return (candidate.rank is None, candidate.rank or 0, candidate.index)


@dataclass(frozen=True)
class LogRecord:
    id: str
    created_at: datetime  # UTC
    model: str
    request: dict[str, Any]  # the chat completion request as received
    latencies: Latencies
    metadata: dict[str, str]
    criteria_versions: dict[str, str]  # {slug: version} of every criterion that scored
    candidates: tuple[CandidateRecord, ...]  # candidate_order: rank order, best first; unranked ones last
    completion_id: str | None = None  # the `id` of the completion the client got (OpenPipe's completionId)
    cache_hit: bool = False  # answered from the response cache: no upstream call, no scoring
    budget: dict[str, Any] | None = None  # op-bon's usage.rewardgate (tokens generated and saved); None without it


@dataclass(frozen=True)
class LogQuery:
    """Filters for listing and exports; every condition given must hold."""

    metadata: Mapping[str, str] = field(default_factory=dict)  # every key=value pair must match
    model: str | None = None
    since: datetime | None = None  # created_at >= since
    before: datetime | None = None  # created_at < before
    completion_id: str | None = None


@dataclass(frozen=True)
class LogPage:
    logs: tuple[LogRecord, ...]  # newest first
    next_cursor: str | None  # pass to list_logs for the next page; None on the last page


EntrySource = Literal["upload", "log", "feedback"]
ENTRY_SOURCES: tuple[EntrySource, ...] = ("upload", "log", "feedback")


@dataclass(frozen=True)
class DatasetRecord:
    id: str  # "ds_" + ULID
    name: str  # unique
    description: str
    created_at: datetime
    train: int = 0  # entries per split
    test: int = 0


JobState = Literal["PENDING", "QUEUED", "TRAINING", "DEPLOYED", "ERROR"]
JobKind = Literal["train", "import"]
JOB_FIELDS = ("state", "error", "progress", "metrics", "reward_stats", "version", "resumed")  # what updates change
JOB_JSON_FIELDS = ("progress", "metrics", "reward_stats")  # the ones of JOB_FIELDS stored as JSON


@dataclass(frozen=True)
class JobRecord:
    """A reward-model training job (docs/LIFECYCLE.md). `data_path` is the dataset as exported for the trainer."""

    id: str  # "job_" + ULID
    slug: str
    dataset_id: str
    base_model: str
    hyperparameters: Mapping[str, Any]
    data_path: str
    created_at: datetime
    updated_at: datetime
    state: JobState = "PENDING"
    error: str | None = None
    progress: Mapping[str, Any] | None = None  # {step, total, loss, accuracy}
    metrics: Mapping[str, Any] | None = None  # TEST metrics from rewardgate.json
    reward_stats: Mapping[str, Any] | None = None
    version: str | None = None  # "vN" once DEPLOYED
    resumed: int = 0  # times a gateway restart resumed it
    kind: JobKind = "train"  # train: rewardgate-train on the dataset; import: rewardgate-rm import of base_model


@dataclass(frozen=True)
class NewEntry:
    pair: Mapping[str, Any]  # a seed-format record WITH its split: gateway.formats.PreferencePair.to_json()
    source: EntrySource = "upload"
    source_ref: str | None = None  # the log id of "log" and "feedback" entries


@dataclass(frozen=True)
class EntryRecord:
    id: str  # "dse_" + ULID
    dataset_id: str
    created_at: datetime
    split: str
    source: str
    source_ref: str | None
    pair: dict[str, Any]


@dataclass(frozen=True)
class EntryPage:
    entries: tuple[EntryRecord, ...]  # in insertion order
    next_cursor: str | None


@dataclass(frozen=True)
class AddedEntries:
    dataset: DatasetRecord  # its counts after the insert
    added: int
    duplicates: tuple[str, ...]  # source_refs of "log" entries already in the dataset, so not added again
