"""Persistence: best-of-N logs (request, candidates, scores, latencies, criteria versions, metadata), the versioned
criterion definitions (LLM judges, rules) with their alignment reports, datasets of preference pairs, and training
jobs. The public face: the LogStore interface, its records and errors, the metadata rules, the log -> preference
pair rule, and open_store, which builds the one Store class (core.py) over the SQL dialect a URL names (sqlite.py,
or postgres.py for several replicas). Imports nothing of the project but gateway.formats and gateway.protocol: no
starlette, httpx, litellm or torch; psycopg only for a postgresql:// url.

    StoreError                  every error the store raises (gateway/errors.py maps them to responses)
    ├── StoreBusyError          the database stayed locked longer than busy_timeout_s
    ├── StoreClosedError        the store was used after aclose()
    ├── LogNotFoundError        no log with that id
    ├── CriterionNotFoundError  no criterion definition with that slug (or version)
    ├── DatasetNotFoundError    no dataset with that id or name
    ├── EntryNotFoundError      no entry with that id in that dataset
    ├── JobNotFoundError        no training job with that id
    └── InvalidInputError       (also a ValueError) a bad cursor, limit, datetime, or a log the schema rejects
        ├── MetadataError       metadata breaks OpenAI's string-map rules; `.key` names the key
        ├── CriterionExistsError  a new criterion's slug is taken, or a new version changes the slug's kind
        ├── DatasetExistsError  a new dataset's name is taken
        └── InvalidEntriesError an upload has bad entries (raised by gateway.service.datasets before anything is
                                stored); `.invalid` lists every one as an EntryError
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gateway.store.core import Store, next_criterion_version
from gateway.store.dialect import Dialect
from gateway.store.errors import (
    CriterionExistsError,
    CriterionNotFoundError,
    DatasetExistsError,
    DatasetNotFoundError,
    EntryError,
    EntryNotFoundError,
    InvalidEntriesError,
    InvalidInputError,
    JobNotFoundError,
    LogNotFoundError,
    MetadataError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
)
from gateway.store.ids import new_id, new_log_id
from gateway.store.interface import LogStore
from gateway.store.metadata import (
    METADATA_MAX_KEY_CHARS,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_CHARS,
    validate_metadata,
)
from gateway.store.pairs import preference_pair
from gateway.store.records import (
    JOB_FIELDS,
    MAX_PAGE,
    AddedEntries,
    CandidateRecord,
    DatasetRecord,
    EntryPage,
    EntryRecord,
    EntrySource,
    JobKind,
    JobRecord,
    JobState,
    Latencies,
    LogPage,
    LogQuery,
    LogRecord,
    NewEntry,
    utcnow,
)
from gateway.store.sqlite import SqliteDialect

__all__ = [
    "JOB_FIELDS",
    "MAX_PAGE",
    "METADATA_MAX_KEYS",
    "METADATA_MAX_KEY_CHARS",
    "METADATA_MAX_VALUE_CHARS",
    "AddedEntries",
    "CandidateRecord",
    "CriterionExistsError",
    "CriterionNotFoundError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetRecord",
    "EntryError",
    "EntryNotFoundError",
    "EntryPage",
    "EntryRecord",
    "EntrySource",
    "InvalidEntriesError",
    "InvalidInputError",
    "JobKind",
    "JobNotFoundError",
    "JobRecord",
    "JobState",
    "Latencies",
    "LogNotFoundError",
    "LogPage",
    "LogQuery",
    "LogRecord",
    "LogStore",
    "MetadataError",
    "NewEntry",
    "Store",
    "StoreBusyError",
    "StoreClosedError",
    "StoreError",
    "new_id",
    "new_log_id",
    "next_criterion_version",
    "open_store",
    "preference_pair",
    "validate_metadata",
]


async def open_store(url: str, *, busy_timeout_s: float = 5.0, clock: Callable[[], datetime] = utcnow) -> LogStore:
    """Open the store at `url`, creating and migrating it as needed: "sqlite:///relative.db" or
    "sqlite:////abs/path.db" (SQLAlchemy's spelling), a bare path, or ":memory:"; or a libpq url,
    "postgresql://user:password@host:5432/db" (or postgres://), for gateway/store/postgres.py, which needs
    the `postgres` extra and is imported only here, only then."""
    dialect: Dialect
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from gateway.store.postgres import PostgresDialect
        except ImportError as exc:
            raise StoreError(f"a postgres store needs psycopg: pip install 'rewardgate[postgres]' ({exc})") from exc
        dialect = await PostgresDialect.open(url, busy_timeout_s=busy_timeout_s)
    elif url.startswith("sqlite:///"):
        dialect = await SqliteDialect.open(url.removeprefix("sqlite:///"), busy_timeout_s=busy_timeout_s)
    elif "://" in url:  # only the scheme in the message: the rest may hold a password
        scheme = url.partition("://")[0]
        raise StoreError(f"unsupported store url scheme {scheme!r}: sqlite:///, postgresql:// or a file path")
    else:
        dialect = await SqliteDialect.open(url, busy_timeout_s=busy_timeout_s)
    return Store(dialect, clock=clock)
