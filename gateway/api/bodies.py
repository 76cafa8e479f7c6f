"""Reading what a request carries, for every route module: the body (the size limit, 413; a JSON object, 400
naming the problem; a body checked against a protocol model), the fields a body may have, and the query parameters
and headers the routes share (a page limit, a boolean flag, the log filters, OpenPipe's tags). Imports
gateway.errors, the store's LogQuery, orjson, pydantic and starlette's Request only. JSON is parsed by orjson,
which refuses what the gateway could not send on or store (lone surrogates, NaN, numbers beyond a double) and reads
integers beyond 64 bits as floats; a body nested too deeply to be written out again is refused too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.errors import InvalidRequestError, RequestTooLargeError
from gateway.store import LogQuery

Body = TypeVar("Body", bound=BaseModel)


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


def validated(model: type[Body], body: Mapping[str, Any]) -> Body:
    """`body` as `model` (a strict protocol model); a 400 naming the first field at fault."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise InvalidRequestError(f"{where}: {error['msg']}", param=where) from None


def known_fields(body: Mapping[str, Any], allowed: Collection[str]) -> None:
    """400 naming the first field of `body` that is not in `allowed`."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise InvalidRequestError(f"unknown field {unknown[0]!r} (allowed: {allowed_list})", param=unknown[0])


def page_limit(request: Request, default: int = 50) -> int:
    """?limit=N as a positive integer (its range is the store's to check)."""
    limit = request.query_params.get("limit", str(default))
    if not (limit.isascii() and limit.isdigit()):  # isdigit() alone admits '²', which int() refuses
        raise InvalidRequestError(f"limit must be a positive integer, got {limit!r}", param="limit")
    return int(limit)


def query_flag(request: Request, name: str) -> bool:
    """?name=true|1|false|0 (absent or empty: false)."""
    value = request.query_params.get(name, "false").strip().lower()
    if value not in ("true", "1", "false", "0", ""):
        raise InvalidRequestError(f"{name} must be true or false, got {value!r}", param=name)
    return value in ("true", "1")


def header_flag(value: str | None, name: str) -> bool:
    """A true/false header's value (case and surrounding space ignored); absent is false, anything else a 400."""
    if value is None:
        return False
    word = value.strip().lower()
    if word not in ("true", "false"):
        raise InvalidRequestError(f"{name}: expected 'true' or 'false', got {value!r}", param=name)
    return word == "true"


def log_query(request: Request) -> LogQuery:
    """metadata.KEY=VALUE, model, since, before (ISO 8601 with a timezone) from the query string."""
    params = request.query_params
    metadata = {k.removeprefix("metadata."): v for k, v in params.items() if k.startswith("metadata.")}
    times: dict[str, datetime | None] = {}
    for name in ("since", "before"):
        value = params.get(name)
        try:
            times[name] = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
        except ValueError:
            raise InvalidRequestError(f"{name}: not an ISO 8601 datetime: {value!r}", param=name) from None
    return LogQuery(metadata=metadata, model=params.get("model"), since=times["since"], before=times["before"])


def tag_values(raw: object, param: str) -> dict[str, str | None]:
    """OpenPipe's tags (and the values of its metadata patches): an object whose strings are kept, numbers and
    booleans become their JSON text ("1", "0.5", "true"), and null stays null (an absent key when stored, a removal
    in a patch). Anything else is a 400 naming the key; the store's metadata rules apply afterwards."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param}: expected a JSON object of strings", param=param)
    out: dict[str, str | None] = {}
    for key, value in raw.items():
        if value is None or isinstance(value, str):
            out[key] = value
        elif isinstance(value, bool | int | float):
            out[key] = orjson.dumps(value).decode()
        else:
            raise InvalidRequestError(f"{param}.{key}: expected a string, number, boolean or null", param=param)
    return out
