"""Reading request bodies for the gateway's routes: the size limit (413) and a JSON object (400 naming the problem).

Shared by every route module; imports only gateway.errors and starlette's Request.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.errors import InvalidRequestError, RequestTooLargeError


async def read_bytes(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object."""
    raw = await read_bytes(request, limit)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError(f"malformed JSON body: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", param="body")
    return body
