"""Server-sent events on the way to the client: framing a payload as one `data:` event, the `[DONE]` marker, and the
error event that ends a stream which failed after its first bytes.

Once the first bytes are sent the HTTP status is fixed, so a later failure ends the stream with one
`data: {"error": {...}}` event (OpenAI's envelope; the `openai` SDK raises APIError on it) and no `[DONE]`. The
relay forwards whole events only (gateway.upstream.events.whole_events), so the error event never lands inside a
half-sent one. Imports only gateway.api.errors and orjson.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import orjson

from gateway.api.errors import error_reply

DONE = b"data: [DONE]\n\n"


def frame(payload: Mapping[str, Any]) -> bytes:
    """One event: `data: <JSON>` and the blank line that ends it."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(body: Mapping[str, Any]) -> bytes:
    """The event that ends a failed stream; `body` is the gateway's error envelope {"error": {...}}."""
    return frame(body)


def events(payloads: Iterable[Mapping[str, Any]]) -> bytes:
    """Every payload framed, then [DONE]: a finished completion sent as an event stream in one body."""
    return b"".join(frame(payload) for payload in payloads) + DONE


async def relay(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks as they come; a failure after the first one ends the stream with one error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # the status line is gone: the error travels as the last event instead
        _, body, _ = error_reply(exc)
        yield error_event(body)
