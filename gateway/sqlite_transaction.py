"""The one write transaction of the SQLite store, shared by gateway/sqlite_store.py and gateway/sqlite_datasets.py.

Imports only the stdlib (no starlette, httpx, torch or litellm).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Committed when the block ends, rolled back if it raises: nothing is ever half-stored. It takes the
    write lock up front (IMMEDIATE), so waiting for it is the busy handler's job, never a deadlock.
    Reads need no transaction: a log and its candidates are written once, together, and later only the
    metadata changes, which lives in the log's own row."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
