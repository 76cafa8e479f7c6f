"""The schema of both dialects as ordered steps: SQLITE_MIGRATIONS (version kept in PRAGMA user_version) and
POSTGRES_MIGRATIONS (version kept as rows of the table rewardgate_schema); step i brings a database to version i + 1.
Step N means the same tables in both, so gateway/store/rows.py reads either. Append a step; never edit one: its text
is what existing databases were built with. Each dialect runs its own steps (sqlite.py, postgres.py).
Imports only gateway.store.errors.

Postgres text keys are COLLATE "C" (byte order, as in SQLite) so ids, slugs and names sort the same whatever the
database's locale; JSON columns are JSONB there and text in SQLite, times TIMESTAMPTZ there and fixed-width UTC text
in SQLite.
"""

from __future__ import annotations

from gateway.store.errors import StoreError

# SQLite: step i brings a database to PRAGMA user_version i + 1.
SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: logs and their candidates
        """CREATE TABLE logs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, model TEXT NOT NULL,
            request TEXT NOT NULL, upstream_ms REAL, scoring_ms REAL, total_ms REAL,
            metadata TEXT NOT NULL DEFAULT '{}', criteria_versions TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX logs_created ON logs (created_at, id)",
        """CREATE TABLE candidates (log_id TEXT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, message TEXT, status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            finish_reason TEXT, error TEXT, score REAL, rank INTEGER, criteria_results TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (log_id, idx))""",
    ),
    (  # 2: metadata also as indexed rows, so a metadata filter needs no JSON scan; a model filter index
        """CREATE TABLE log_metadata (log_id TEXT NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
            key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (log_id, key))""",
        "CREATE INDEX log_metadata_key_value ON log_metadata (key, value)",
        "INSERT INTO log_metadata SELECT logs.id, j.key, j.value FROM logs, json_each(logs.metadata) AS j",
        "CREATE INDEX logs_model_created ON logs (model, created_at, id)",
    ),
    (  # 3: criterion definitions, one immutable row per version
        """CREATE TABLE criteria (slug TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
            spec TEXT NOT NULL, description TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, alignment TEXT,
            PRIMARY KEY (slug, version))""",
    ),
    (  # 4: datasets of preference pairs; entries keep insertion order by an AUTOINCREMENT seq (never reused)
        """CREATE TABLE datasets (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL)""",
        "CREATE INDEX datasets_created ON datasets (created_at)",
        """CREATE TABLE dataset_entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE, created_at TEXT NOT NULL,
            split TEXT NOT NULL CHECK (split IN ('TRAIN', 'TEST')), source TEXT NOT NULL
            CHECK (source IN ('upload', 'log', 'feedback')), source_ref TEXT, pair TEXT NOT NULL)""",
        "CREATE INDEX dataset_entries_order ON dataset_entries (dataset_id, seq)",
        "CREATE INDEX dataset_entries_split ON dataset_entries (dataset_id, split, seq)",  # counts and ?split=
        # one pair per log and dataset from from-logs: running it again adds only the logs not yet in
        "CREATE UNIQUE INDEX dataset_entries_log ON dataset_entries (dataset_id, source_ref) WHERE source = 'log'",
    ),
    (  # 5: reward-model training jobs
        """CREATE TABLE jobs (id TEXT PRIMARY KEY, slug TEXT NOT NULL, dataset_id TEXT NOT NULL,
            base_model TEXT NOT NULL, hyperparameters TEXT NOT NULL, data_path TEXT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('PENDING', 'QUEUED', 'TRAINING', 'DEPLOYED', 'ERROR')), error TEXT,
            progress TEXT, metrics TEXT, reward_stats TEXT, version TEXT, resumed INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX jobs_created ON jobs (created_at, id)",
    ),
    (  # 6: the completion id a client saw (OpenPipe's completionId filter), cache hits, and the response cache
        "ALTER TABLE logs ADD COLUMN completion_id TEXT",
        "ALTER TABLE logs ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX logs_completion ON logs (completion_id)",
        # value: the cached completion as JSON text, returned byte for byte; expired rows are never read
        """CREATE TABLE response_cache (key TEXT PRIMARY KEY, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
            value TEXT NOT NULL)""",
        "CREATE INDEX response_cache_created ON response_cache (created_at, key)",
        "CREATE INDEX response_cache_expires ON response_cache (expires_at)",
    ),
    (  # 7: a job's kind: training on a dataset, or importing a published reward model
        "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'import'))",
    ),
    (  # 8: what a budgeted best-of-N (op-bon) generated and saved: usage.rewardgate as JSON; NULL without op-bon
        "ALTER TABLE logs ADD COLUMN budget TEXT",
    ),
)

# Postgres: step i brings a schema to version i + 1 (a row in rewardgate_schema).
POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    (  # 6: the completion id a client saw (OpenPipe's completionId filter), cache hits, and the response cache
        'ALTER TABLE logs ADD COLUMN completion_id TEXT COLLATE "C"',
        "ALTER TABLE logs ADD COLUMN cache_hit BOOLEAN NOT NULL DEFAULT false",
        "CREATE INDEX logs_completion ON logs (completion_id)",
        # value: text, not JSONB: the cached completion comes back byte for byte (JSONB would reorder its keys)
        """CREATE TABLE response_cache (key TEXT COLLATE "C" PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL, value TEXT NOT NULL)""",
        "CREATE INDEX response_cache_created ON response_cache (created_at, key)",
        "CREATE INDEX response_cache_expires ON response_cache (expires_at)",
    ),
    (  # 7: a job's kind: training on a dataset, or importing a published reward model
        "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'import'))",
    ),
    (  # 8: what a budgeted best-of-N (op-bon) generated and saved: usage.rewardgate as JSON; NULL without op-bon
        "ALTER TABLE logs ADD COLUMN budget JSONB",
    ),
)


def checked_version(version: int, steps: tuple[tuple[str, ...], ...]) -> int:
    """`version`, the schema version a database reports; StoreError when it is newer than `steps` know."""
    if version > len(steps):
        raise StoreError(f"database schema v{version} is newer than this code knows (v{len(steps)})")
    return version
