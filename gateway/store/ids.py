"""Record ids: a prefix and a ULID, so ids sort by creation time in both dialects and in cursors.
Imports only the stdlib."""

from __future__ import annotations

import secrets
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, created_at: datetime) -> str:
    """prefix + "_" + a ULID: 26 Crockford base32 chars of 48-bit milliseconds and 80 random bits; sorts by time."""
    value = (int(created_at.timestamp() * 1000) << 80) | secrets.randbits(80)
    return f"{prefix}_" + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_log_id(created_at: datetime) -> str:
    return new_id("log", created_at)
