"""The Postgres store's schema: its ordered MIGRATIONS, tracked in the table `rewardgate_schema`, and the
migration step that replicas starting together run once. Imports psycopg, the stdlib and gateway.store only;
only gateway/postgres_store.py imports this (lazily reached through gateway.store.open_store).

The steps mirror gateway/sqlite_store.py's, so schema vN means the same tables in both. Text keys are
COLLATE "C" (byte order, as in SQLite) so ids, slugs and names sort the same whatever the database's locale.
"""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.store import StoreError

# Ordered schema steps: step i brings a schema to version i + 1 (a row in rewardgate_schema). Append; never edit one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: logs and their candidates
        """CREATE TABLE logs (id TEXT COLLATE "C" PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL, model TEXT NOT NULL,
            request JSONB NOT NULL, upstream_ms DOUBLE PRECISION, scoring_ms DOUBLE PRECISION,
            total_ms DOUBLE PRECISION, metadata JSONB NOT NULL DEFAULT '{}',
            criteria_versions JSONB NOT NULL DEFAULT '{}')""",
        "CREATE INDEX logs_created ON logs (created_at, id)",
        """CREATE TABLE candidates (log_id TEXT COLLATE "C" NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, message JSONB, status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            finish_reason TEXT, error TEXT, score DOUBLE PRECISION, rank INTEGER,
            criteria_results JSONB NOT NULL DEFAULT '{}', PRIMARY KEY (log_id, idx))""",
    ),
    (  # 2: the metadata filter is JSONB containment (`metadata @> {...}`) on a GIN index; a model filter index
        "CREATE INDEX logs_metadata ON logs USING GIN (metadata jsonb_path_ops)",
        "CREATE INDEX logs_model_created ON logs (model, created_at, id)",
    ),
    (  # 3: criterion definitions, one immutable row per version
        """CREATE TABLE criteria (slug TEXT COLLATE "C" NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
            spec JSONB NOT NULL, description TEXT NOT NULL DEFAULT '', created_at TIMESTAMPTZ NOT NULL,
            alignment JSONB, PRIMARY KEY (slug, version))""",
    ),
    (  # 4: datasets of preference pairs; `seq` identities keep creation/insertion order (never reused)
        """CREATE TABLE datasets (seq BIGINT GENERATED ALWAYS AS IDENTITY, id TEXT COLLATE "C" PRIMARY KEY,
            name TEXT COLLATE "C" NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
            created_at TIMESTAMPTZ NOT NULL)""",
        "CREATE INDEX datasets_created ON datasets (created_at, seq)",
        """CREATE TABLE dataset_entries (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT COLLATE "C" NOT NULL UNIQUE,
            dataset_id TEXT COLLATE "C" NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
            created_at TIMESTAMPTZ NOT NULL, split TEXT NOT NULL CHECK (split IN ('TRAIN', 'TEST')),
            source TEXT NOT NULL CHECK (source IN ('upload', 'log', 'feedback')), source_ref TEXT COLLATE "C",
            pair JSONB NOT NULL)""",
        "CREATE INDEX dataset_entries_order ON dataset_entries (dataset_id, seq)",
        "CREATE INDEX dataset_entries_split ON dataset_entries (dataset_id, split, seq)",  # counts and ?split=
        # one pair per log and dataset from from-logs: running it again adds only the logs not yet in
        "CREATE UNIQUE INDEX dataset_entries_log ON dataset_entries (dataset_id, source_ref) WHERE source = 'log'",
    ),
    (  # 5: reward-model training jobs
        """CREATE TABLE jobs (id TEXT COLLATE "C" PRIMARY KEY, slug TEXT NOT NULL, dataset_id TEXT NOT NULL,
            base_model TEXT NOT NULL, hyperparameters JSONB NOT NULL, data_path TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('PENDING', 'QUEUED', 'TRAINING', 'DEPLOYED', 'ERROR')), error TEXT,
            progress JSONB, metrics JSONB, reward_stats JSONB, version TEXT, resumed INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX jobs_created ON jobs (created_at, id)",
    ),
)

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS rewardgate_schema (version INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
# One lock per schema (several rewardgate schemas may share a database); NULL would silently lock nothing.
_MIGRATION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('rewardgate.migrate'), hashtext(coalesce(current_schema(), '')))"
)


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int:
    """The schema's version (0 when new); StoreError when it is newer than this code."""
    row = await (await conn.execute("SELECT coalesce(max(version), 0) FROM rewardgate_schema")).fetchone()
    version = int(row[0]) if row is not None else 0
    if version > len(MIGRATIONS):
        raise StoreError(f"database schema v{version} is newer than this code knows (v{len(MIGRATIONS)})")
    return version


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Apply the pending MIGRATIONS, each in one transaction with its version row, under a transaction-scoped
    advisory lock: replicas starting together wait for the first one's step, re-read the version and apply
    nothing twice. Postgres DDL is transactional, so a failed step leaves the schema as it was."""
    while True:
        async with conn.transaction():
            await conn.execute(_MIGRATION_LOCK)
            await conn.execute(_VERSION_TABLE)
            version = await schema_version(conn)
            if version == len(MIGRATIONS):
                return
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO rewardgate_schema (version) VALUES (%s)", (version + 1,))
