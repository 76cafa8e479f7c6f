"""Persistence: best-of-N logs (request, candidates, scores, latencies, criteria versions, metadata), the
versioned criterion definitions (LLM judges, rules) with their alignment reports, and datasets of preference pairs.

Owns the `LogStore` interface (SQLite, and Postgres for several replicas, behind it), the records and errors,
the metadata rules, and the log -> preference pair rule (DESIGN contract 1); the SQLite implementation with its
schema migrations is gateway/sqlite_store.py.
Imports only the stdlib, gateway.formats and gateway.criteria.definitions: no starlette, httpx, torch or litellm.

SQLite runs in WAL mode on ONE worker thread that owns the connection, so the event loop never
blocks; every write is one transaction. The errors (gateway/errors.py maps them to responses)::

    StoreError                  every error raised here
    ├── StoreBusyError          the database stayed locked longer than busy_timeout_s
    ├── StoreClosedError        the store was used after aclose()
    ├── LogNotFoundError        no log with that id
    ├── CriterionNotFoundError  no criterion definition with that slug (or version)
    ├── DatasetNotFoundError    no dataset with that id or name
    ├── EntryNotFoundError      no entry with that id in that dataset
    └── InvalidInputError       (also a ValueError) a bad cursor, limit, datetime, or a log the schema rejects
        ├── MetadataError       metadata breaks OpenAI's string-map rules; `.key` names the key
        ├── CriterionExistsError  a new criterion's slug is taken, or a new version changes the slug's kind
        ├── DatasetExistsError  a new dataset's name is taken
        └── InvalidEntriesError an upload has bad entries (raised by gateway/datasets.py before anything is
                                stored); `.invalid` lists every one as an EntryError
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from gateway.formats import PairError, parse_pair
from gateway.protocol import CriterionDefinition

T = TypeVar("T")

METADATA_MAX_KEYS, METADATA_MAX_KEY_CHARS, METADATA_MAX_VALUE_CHARS = 16, 64, 512  # OpenAI's limits
MAX_PAGE = 1000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # UTC, fixed width: sorts as text, in SQLite and in cursors


class StoreError(Exception):
    """Base of every error this module raises."""


class StoreBusyError(StoreError):
    """Another connection held the database locked longer than the busy timeout."""


class StoreClosedError(StoreError):
    """The store was used after aclose()."""


class LogNotFoundError(StoreError):
    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        super().__init__(f"no log with id {log_id!r}")


class InvalidInputError(StoreError, ValueError):
    """The caller passed something the store cannot take; the message says what."""


class MetadataError(InvalidInputError):
    def __init__(self, key: str | None, reason: str) -> None:
        self.key = key
        super().__init__(f"metadata[{key!r}]: {reason}" if key is not None else f"metadata: {reason}")


class CriterionNotFoundError(StoreError):
    def __init__(self, criterion_id: str) -> None:
        super().__init__(f"no criterion {criterion_id!r}")
        self.criterion_id = criterion_id


class CriterionExistsError(InvalidInputError):
    """A create names a slug that exists, or a new version would change the slug's kind."""


def next_criterion_version(slug: str, kind: str, existing: Sequence[CriterionDefinition], new_version: bool) -> int:
    """The version a create_criterion call takes, given the slug's versions read under the write lock
    (both backends): v1 for a new slug, the next one with `new_version`, else the errors LogStore documents."""
    if existing and not new_version:
        raise CriterionExistsError(f"criterion {slug!r} exists (v1..v{existing[-1].version}): add a version")
    if not existing and new_version:
        raise CriterionNotFoundError(slug)
    if existing and existing[-1].kind != kind:
        raise CriterionExistsError(f"criterion {slug!r} is a {existing[-1].kind} criterion, not {kind}")
    return existing[-1].version + 1 if existing else 1


class DatasetNotFoundError(StoreError):
    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(f"no dataset {dataset!r} (by id or name)")


class JobNotFoundError(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no training job {job_id!r}")
        self.job_id = job_id


class EntryNotFoundError(StoreError):
    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(f"no entry {entry_id!r} in that dataset")


class DatasetExistsError(InvalidInputError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a dataset named {name!r} exists")


@dataclass(frozen=True)
class EntryError:
    """One bad entry of an upload: its 0-based position among the entries, its 1-based line, and why."""

    index: int
    line: int
    error: str


class InvalidEntriesError(InvalidInputError):
    def __init__(self, invalid: Sequence[EntryError]) -> None:
        self.invalid = tuple(invalid)
        shown = "; ".join(f"entry {e.index} (line {e.line}): {e.error}" for e in self.invalid[:5])
        more = f"; and {len(self.invalid) - 5} more" if len(self.invalid) > 5 else ""
        super().__init__(f"{len(self.invalid)} invalid entry(ies), nothing added: {shown}{more}")


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


@dataclass(frozen=True)
class LogRecord:
    id: str
    created_at: datetime  # UTC
    model: str
    request: dict[str, Any]  # the chat completion request as received
    latencies: Latencies
    metadata: dict[str, str]
    criteria_versions: dict[str, str]  # {slug: version} of every criterion that scored
    candidates: tuple[CandidateRecord, ...]  # rank order, best first; unranked ones last, by index

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)  # a deep copy, nested dataclasses as dicts
        return {**out, "created_at": _format_time(self.created_at), "candidates": list(out["candidates"])}


@dataclass(frozen=True)
class LogQuery:
    """Filters for listing and exports; every condition given must hold."""

    metadata: Mapping[str, str] = field(default_factory=dict)  # every key=value pair must match
    model: str | None = None
    since: datetime | None = None  # created_at >= since
    before: datetime | None = None  # created_at < before


@dataclass(frozen=True)
class LogPage:
    logs: tuple[LogRecord, ...]  # newest first
    next_cursor: str | None  # pass to list_logs for the next page; None on the last page


EntrySource = Literal["upload", "log", "feedback"]


@dataclass(frozen=True)
class DatasetRecord:
    id: str  # "ds_" + ULID
    name: str  # unique
    description: str
    created_at: datetime
    train: int = 0  # entries per split
    test: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "dataset", "name": self.name, "description": self.description,
                "created_at": _format_time(self.created_at), "entries": self.train + self.test,
                "counts": {"TRAIN": self.train, "TEST": self.test}}  # fmt: skip


JobState = Literal["PENDING", "QUEUED", "TRAINING", "DEPLOYED", "ERROR"]
JOB_FIELDS = ("state", "error", "progress", "metrics", "reward_stats", "version", "resumed")  # what updates change


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

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "reward_model.job", "slug": self.slug, "version": self.version,
                "model": f"{self.slug}@{self.version}" if self.version else None, "dataset_id": self.dataset_id,
                "base_model": self.base_model, "hyperparameters": dict(self.hyperparameters), "state": self.state,
                "error": self.error, "progress": self.progress, "metrics": self.metrics,
                "reward_stats": self.reward_stats, "created_at": _format_time(self.created_at),
                "updated_at": _format_time(self.updated_at), "resumed": self.resumed}  # fmt: skip


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

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": _format_time(self.created_at)}


@dataclass(frozen=True)
class EntryPage:
    entries: tuple[EntryRecord, ...]  # in insertion order
    next_cursor: str | None


@dataclass(frozen=True)
class AddedEntries:
    dataset: DatasetRecord  # its counts after the insert
    added: int
    duplicates: tuple[str, ...]  # source_refs of "log" entries already in the dataset, so not added again


class LogStore(Protocol):
    """What the gateway needs from persistence: SqliteLogStore (gateway/sqlite_store.py) and PostgresLogStore
    (gateway/postgres_store.py), chosen by open_store's URL."""

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
    ) -> LogRecord: ...

    async def get_log(self, log_id: str) -> LogRecord: ...

    async def list_logs(
        self, query: LogQuery | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> LogPage: ...

    async def update_metadata(self, log_id: str, patch: Mapping[str, str | None]) -> LogRecord: ...

    async def add_criterion_results(self, log_id: str, slug: str, results: Mapping[int, Mapping[str, Any]]) -> None:
        """Set criteria_results[slug] of the log's candidates (by candidate index) in one transaction; the
        combined score and rank stay those of the request (offline scoring, `rewardgate eval logs`)."""
        ...

    def export_jsonl(self, query: LogQuery | None = None) -> AsyncIterator[str]: ...

    def export_pairs(self, query: LogQuery | None = None) -> AsyncIterator[str]: ...

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

    async def aclose(self) -> None: ...


def new_id(prefix: str, created_at: datetime) -> str:
    """prefix + "_" + a ULID: 26 Crockford base32 chars of 48-bit milliseconds and 80 random bits; sorts by time."""
    value = (int(created_at.timestamp() * 1000) << 80) | secrets.randbits(80)
    return f"{prefix}_" + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_log_id(created_at: datetime) -> str:
    return new_id("log", created_at)


def validate_metadata(metadata: object) -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 string keys of <= 64 characters, string values of <= 512."""
    if not isinstance(metadata, Mapping):
        raise MetadataError(None, f"must be an object of strings, got {type(metadata).__name__}")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise MetadataError(str(key), "keys must be strings")
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise MetadataError(key, f"key is {len(key)} characters (limit {METADATA_MAX_KEY_CHARS})")
        if not isinstance(value, str):
            raise MetadataError(key, f"value must be a string, got {type(value).__name__}")
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise MetadataError(key, f"value is {len(value)} characters (limit {METADATA_MAX_VALUE_CHARS})")
        out[key] = value
        if len(out) > METADATA_MAX_KEYS:
            raise MetadataError(key, f"one key too many (limit {METADATA_MAX_KEYS} keys)")
    return out


def preference_pair(log: LogRecord) -> dict[str, Any] | None:
    """The log as one seed-format preference pair: the best vs the worst successful candidate by combined score.

    None when fewer than two candidates succeeded, best and worst tie, or the messages make no valid pair.
    `split` is left out, so the reader's prompt-hash split applies; `metadata` carries the log id.
    """
    scored = [(c.score, c) for c in log.candidates if c.status == "ok" and c.score is not None and c.message]
    messages = log.request.get("messages")
    if len(scored) < 2 or not isinstance(messages, list):
        return None
    (best_score, best), (worst_score, worst) = max(scored, key=lambda p: p[0]), min(scored, key=lambda p: p[0])
    if best_score == worst_score:
        return None
    record: dict[str, Any] = {
        "messages": [*messages, best.message],
        "rejected_message": worst.message,
        "metadata": {"log_id": log.id, "chosen_score": best_score, "rejected_score": worst_score},
    }
    record.update({key: log.request[key] for key in ("tools", "tool_choice") if log.request.get(key) is not None})
    try:
        out = parse_pair(record).to_json()  # normalised by the format's own writer
    except PairError:
        return None
    del out["split"]
    return out


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInputError(f"{what}: the datetime must be timezone-aware")
    return value.astimezone(UTC)


def _format_time(value: datetime, what: str = "created_at") -> str:
    return _utc(value, what).strftime(_TIME_FORMAT)


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


async def open_store(url: str, *, busy_timeout_s: float = 5.0, clock: Callable[[], datetime] = _utcnow) -> LogStore:
    """Open the store at `url`, creating and migrating it as needed: "sqlite:///relative.db" or
    "sqlite:////abs/path.db" (SQLAlchemy's spelling), a bare path, or ":memory:"; or a libpq url,
    "postgresql://user:password@host:5432/db" (or postgres://), for gateway/postgres_store.py, which needs
    the `postgres` extra and is imported only here, only then."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from gateway.postgres_store import PostgresLogStore
        except ImportError as exc:
            raise StoreError(f"a postgres store needs psycopg: pip install 'rewardgate[postgres]' ({exc})") from exc
        return await PostgresLogStore.open(url, busy_timeout_s=busy_timeout_s, clock=clock)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
    elif "://" in url:  # only the scheme in the message: the rest may hold a password
        scheme = url.partition("://")[0]
        raise StoreError(f"unsupported store url scheme {scheme!r}: sqlite:///, postgresql:// or a file path")
    else:
        path = url
    from gateway.sqlite_store import SqliteLogStore  # the implementation imports this interface module

    store = SqliteLogStore(path, busy_timeout_s=busy_timeout_s, clock=clock)
    try:
        await store._run(lambda db: None)  # connect and migrate now, so a bad path fails here
    except BaseException:
        await store.aclose()
        raise
    return store
