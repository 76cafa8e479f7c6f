"""What both dialects write the same way because the core encodes it: JSON text, the rows of a new log, and page
cursors (so a cursor from one replica pages on another, whatever its dialect). Imports only the stdlib and
gateway.store's records, errors and dialect modules."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from gateway.store.dialect import CandidateRow, LogRow
from gateway.store.errors import InvalidInputError
from gateway.store.records import CandidateRecord, LogRecord, format_time, parse_time


def dump_json(value: Any, what: str) -> str:
    """Compact JSON text; InvalidInputError names `what` for a value JSON cannot hold (NaN, an object)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what}: not storable as JSON ({exc})") from None


def dump_json_or_none(value: Any, what: str) -> str | None:
    return None if value is None else dump_json(value, what)


def log_row(log: LogRecord) -> LogRow:
    """The log's row, JSON columns as text."""
    lat = log.latencies
    return LogRow(
        id=log.id,
        created_at=log.created_at,
        model=log.model,
        request=dump_json(log.request, "request"),
        upstream_ms=lat.upstream_ms,
        scoring_ms=lat.scoring_ms,
        total_ms=lat.total_ms,
        metadata=dump_json(log.metadata, "metadata"),
        criteria_versions=dump_json(log.criteria_versions, "criteria_versions"),
        completion_id=log.completion_id,
        cache_hit=log.cache_hit,
        budget=dump_json_or_none(log.budget, "budget"),
    )


def candidate_row(c: CandidateRecord) -> CandidateRow:
    """The candidate's row, JSON columns as text."""
    message = dump_json_or_none(c.message, f"candidates[{c.index}].message")
    results = dump_json(c.criteria_results, f"candidates[{c.index}].criteria_results")
    return CandidateRow(c.index, message, c.status, c.finish_reason, c.error, c.score, c.rank, results)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode("ascii")


def _unb64(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")


def encode_log_cursor(created_at: datetime, log_id: str) -> str:
    """base64 of "<created_at as fixed-width UTC text>|<id>": the last log of a page."""
    return _b64(f"{format_time(created_at)}|{log_id}")


def decode_log_cursor(cursor: str) -> tuple[datetime, str]:
    try:  # binascii.Error, Unicode errors, a bad split and a bad time are all ValueErrors
        created_at, log_id = _unb64(cursor).split("|")
        return parse_time(created_at), log_id
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
