"""Reading what a request carries, for every route module: the body (the size limit, 413; a JSON object, 400
naming the problem; a body checked against a protocol model), the fields a body may have, and the query parameters
and headers the routes share (a page limit, a boolean flag, the log filters, OpenPipe's tags), and noticing when
the client leaves. Imports gateway.config, gateway.errors, the store's LogQuery, orjson, pydantic and starlette's
Request only. JSON is parsed by orjson,
which refuses what the gateway could not send on or store (lone surrogates, NaN, numbers beyond a double) and reads
integers beyond 64 bits as floats; a body nested too deeply to be written out again is refused too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from gateway.config import GatewaySettings
from gateway.errors import ClientGoneError, InvalidRequestError, RequestTimeoutError, RequestTooLargeError
from gateway.store import LogQuery

T = TypeVar("T")
Body = TypeVar("Body", bound=BaseModel)


async def read_bytes(request: Request, settings: GatewaySettings) -> bytes:
    """The whole body: refused with 413 as soon as it (or its declared length) passes `max_body_bytes`, with 408
    when it has not all arrived within `body_timeout_s` (a slow or stalled client must not hold a connection at
    will), and counted as the client's 499 when the client leaves before sending it all."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:  # isdigit() alone admits '²'
        raise RequestTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {settings.body_timeout_s:g} s ({size} bytes came)"
        ) from None
    except ClientDisconnect:
        raise ClientGoneError(f"the client left after sending {size} bytes of its body") from None
    return b"".join(chunks)


async def read_json(request: Request, settings: GatewaySettings) -> dict[str, Any]:
    """The body as a JSON object."""
    raw = await read_bytes(request, settings)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"malformed JSON body: {_json_problem(raw, exc)}", param="body") from None
    try:  # orjson writes at most 254 levels but reads 1024: refuse here what could not be sent on
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(f"the JSON body cannot be processed: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", param="body")
    return body


def _json_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """orjson's complaint, except for bytes that are not UTF-8, where it speaks of surrogates: say where instead."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte {bad.start}: 0x{raw[bad.start]:02x})"
    return str(exc)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled as soon as the client leaves (ClientGoneError): its upstream calls and scoring stop instead
    of running on for nobody. Call it once the body is read: from then on the next ASGI message the server sends
    is http.disconnect, when (and only when) the client has gone, or once the response is sent.

    `work` runs in the caller's task, and one watcher task cancels that task when the client goes: a task and an
    asyncio.wait fewer per request than racing the work's own task against the watcher."""
    task = asyncio.current_task()
    assert task is not None, "until_disconnected runs inside a task"
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        result = await work
    except asyncio.CancelledError:
        if not gone:  # cancelled from elsewhere (the server shutting down): not ours to turn into an answer
            raise
    else:
        if not gone:
            return result
    finally:
        watcher.cancel()
    task.uncancel()  # the watcher's cancel landed (or `work` swallowed it): take it back, and say why the work stopped
    raise ClientGoneError("the client left before its answer was ready; its work was cancelled")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def validated(model: type[Body], body: Mapping[str, Any]) -> Body:
    """`body` as `model` (a strict protocol model); a 400 naming the first field at fault."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None


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


def utf8_header(value: str, name: str) -> str:
    """A header's value read as UTF-8 (Starlette decodes header bytes as latin-1, so 'é' arrives as 'Ã©')."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{name}: not UTF-8 text (byte {exc.start})", param=name) from None


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


def invalid_body(exc: ValidationError) -> InvalidRequestError:
    """A body model's first problem as a 400 naming the field (`messages[0].content[1]`), the alternatives of a
    union told together rather than as pydantic's tagged branches."""
    first = exc.errors()[0]
    path = _where(first["loc"])
    messages = [e["msg"].removeprefix("Value error, ") for e in exc.errors() if _where(e["loc"]) == path]
    detail = "; ".join(dict.fromkeys(messages))
    # a model-level check names its own field first ("content[1]: ..."): join it onto the path
    head, sep, rest = detail.partition(": ")
    if sep and len(messages) == 1 and head.replace("_", "").replace("[", "").replace("]", "").isalnum():
        path, detail = (f"{path}.{head}" if path else head), rest
    path = path.replace(".[", "[")
    return InvalidRequestError(f"{path or 'body'}: {detail}", param=path or "body")


def _where(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'; pydantic's union-branch tags ('str', 'list[str]',
    'constrained-float'...) are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "-" in part or part in _BRANCH_TAGS:
            continue
        else:
            out += f".{part}" if out else part
    return out


_BRANCH_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


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
