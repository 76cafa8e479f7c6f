"""Reading request bodies for the gateway's routes: the size limit (413) and a JSON object (400 naming the problem).

Shared by every route module; imports only gateway.errors, orjson and starlette's Request. JSON is parsed by orjson,
which refuses what the gateway could not send on or store (lone surrogates, NaN, numbers beyond a double) and reads
integers beyond 64 bits as floats; a body nested too deeply to be written out again is refused too.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from gateway.errors import InvalidRequestError, RequestTooLargeError


async def read_bytes(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:  # isdigit() alone admits '²'
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
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # invalid UTF-8 included
        raise InvalidRequestError(f"malformed JSON body: {exc}", param="body") from None
    try:  # orjson writes at most 254 levels but reads 1024: refuse here what could not be sent on
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(f"the JSON body cannot be processed: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", param="body")
    return body
