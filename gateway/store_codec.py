"""What both store backends (gateway/sqlite_store.py, gateway/postgres_store.py) write the same way: JSON text,
page cursors (so a cursor from one replica pages on another, whatever its backend), and the exports built on
list_logs. Imports only the stdlib and gateway.store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from gateway.store import InvalidInputError, LogQuery, LogRecord, LogStore, _format_time, _parse_time, preference_pair

EXPORT_BATCH = 200  # logs read per call while an export streams


def dump_json(value: Any, what: str) -> str:
    """Compact JSON text; InvalidInputError names `what` for a value JSON cannot hold (NaN, an object)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what}: not storable as JSON ({exc})") from None


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode("ascii")


def _unb64(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")


def encode_log_cursor(created_at: datetime, log_id: str) -> str:
    """base64 of "<created_at as fixed-width UTC text>|<id>": the last log of a page."""
    return _b64(f"{_format_time(created_at)}|{log_id}")


def decode_log_cursor(cursor: str) -> tuple[datetime, str]:
    try:  # binascii.Error, Unicode errors, a bad split and a bad time are all ValueErrors
        created_at, log_id = _unb64(cursor).split("|")
        return _parse_time(created_at), log_id
    except ValueError:
        raise InvalidInputError(f"invalid cursor {cursor!r}") from None


def encode_entry_cursor(seq: int) -> str:
    """A dataset entry's insertion number (never reused, so a cursor never skips a later entry)."""
    return _b64(f"e{seq}")


def decode_entry_cursor(cursor: str) -> int:
    try:
        text = _unb64(cursor)
        if not text.startswith("e"):
            raise ValueError(text)
        return int(text[1:])
    except ValueError:  # binascii.Error and Unicode errors are ValueErrors too
        raise InvalidInputError(f"invalid cursor {cursor!r}") from None


async def iter_logs(store: LogStore, query: LogQuery | None) -> AsyncIterator[LogRecord]:
    """Every log matching `query`, newest first, read a page at a time."""
    cursor = None
    while True:
        page = await store.list_logs(query, limit=EXPORT_BATCH, cursor=cursor)
        for log in page.logs:
            yield log
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def export_jsonl(store: LogStore, query: LogQuery | None) -> AsyncIterator[str]:
    """The matching logs, newest first, one JSON object per "\\n"-terminated line."""
    async for log in iter_logs(store, query):
        yield dump_json(log.to_json(), "log") + "\n"


async def export_pairs(store: LogStore, query: LogQuery | None) -> AsyncIterator[str]:
    """The matching logs as seed-format preference pairs (see preference_pair); logs with none are skipped."""
    async for log in iter_logs(store, query):
        pair = preference_pair(log)
        if pair is not None:
            yield dump_json(pair, "pair") + "\n"
