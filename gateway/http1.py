"""A small HTTP/1.1 client for the gateway's hot path: whole-body calls to plain-http servers on keep-alive
connections (an in-cluster upstream such as vLLM, TGI or a LiteLLM proxy; networked reward servers).

Why it exists: aiohttp's client was the largest share of the gateway's CPU per pass-through request
(bench/profile_gateway.py). This one writes one pre-rendered request and parses the reply with httptools (C, already
the gateway's server-side parser): 19.5 us of CPU per call against aiohttp's 61 on the CPU machine
(bench/http_client_cpu.py; docs/BENCHMARKS.md, "Gateway overhead").

What it does: GET/POST with a bytes body to one `http://host:port` origin; replies delimited by Content-Length,
chunked encoding or the connection's end; gzip/deflate bodies decoded. Up to `limit` connections per origin, idle
ones reused newest first. A connection is closed, not reused, after `Connection: close`, an HTTP/1.0 reply, a
malformed reply, a timeout or a cancellation mid-exchange (so a server generating for a client that left sees the
connection go). One retry on a new connection when a reused one turns out closed before any byte of the reply came
(the server's keep-alive timeout racing the request: nothing reached it). Every call has a deadline covering the
wait for a connection slot, the connect, the write and the whole reply.

What it does not do (callers keep aiohttp for these): TLS, proxies, redirects, cookies, streaming replies, 1xx and
`Expect`, HTTP/2. Errors: TimeoutError past the deadline; OSError (ConnectionError and the socket's own) when the
request got no answer or only part of one (IncompleteReply); ReplyError, also a ConnectionError, when an answer
came that cannot be read.

Imports only the stdlib and httptools.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class ReplyError(ConnectionError):
    """An answer came that cannot be read: malformed, or in an encoding this client does not decode."""


class IncompleteReply(ConnectionError):
    """The connection closed after the reply began and before it was complete."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased, in the order sent
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one exchange at a time; the reply is parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False  # the last reply ended cleanly and allows another request
        self.received = False  # a byte of the current reply has come
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._until_eof = False  # neither Content-Length nor chunked: the body ends with the connection

    def begin(self, waiter: asyncio.Future[Response]) -> None:
        self._waiter, self.received, self.reusable = waiter, False, False
        self._headers, self._body, self._until_eof = [], [], False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ReplyError(f"malformed HTTP reply: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_eof and self._waiter is not None:
            self._finish(keep_alive=False)
        else:
            why = "the server closed the connection before its reply" + (" was complete" if self.received else "")
            self._fail(IncompleteReply(why) if self.received else ConnectionResetError(why))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        names = {name for name, _ in self._headers}
        self._until_eof = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # an interim reply: the real one follows
            self._headers, self._body = [], []
            return
        self._finish(keep_alive=self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        try:
            body = _decoded(self._headers, b"".join(self._body))
        except ReplyError as exc:
            waiter.set_exception(exc)
            return
        self.reusable = keep_alive and not self.closed
        waiter.set_result(Response(self._parser.get_status_code(), tuple(self._headers), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text


def _decoded(headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    encoding = next((v.strip().lower() for k, v in headers if k == b"content-encoding"), b"identity")
    try:
        if encoding == b"gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == b"deflate":
            return zlib.decompress(body)
    except zlib.error as exc:
        raise ReplyError(f"the reply's {encoding.decode('latin-1')} body does not decode: {exc}") from None
    if encoding not in (b"identity", b""):
        raise ReplyError(f"the reply is {encoding.decode('latin-1')}-encoded, which this client does not decode")
    return body


class Http1Pool:
    """Keep-alive connections to one `http://host[:port]` origin. Make it inside the running loop; `close()` ends
    the idle connections."""

    def __init__(self, origin: str, *, limit: int = 100, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(origin)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host[:port] origin, got {origin!r}")
        if limit < 1:
            raise ValueError(f"limit: at least one connection, got {limit}")
        self.host, self.port = parts.hostname, parts.port or 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == 80 else f"{host}:{self.port}"
        for name, value in (headers or {}).items():
            if _unsafe(name + value) or ":" in name:
                raise ValueError(f"header {name!r}: a name or value with a line break (or a colon in the name)")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        # Accept-Encoding: identity: the body is not compressed (an intra-cluster hop gains nothing by it)
        self._head = f"Host: {authority}\r\nAccept-Encoding: identity\r\n{extra}".encode("latin-1")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def request(
        self, method: str, path: str, body: bytes | None, timeout_s: float, content_type: str = "application/json"
    ) -> Response:
        """One exchange: `path` is the request target (`/v1/score`), `body` None sends no body."""
        if _unsafe(path) or " " in path:
            raise ValueError(f"request target {path!r}: no spaces or line breaks")
        length = b"" if body is None else b"Content-Type: %s\r\nContent-Length: %d\r\n" % (
            content_type.encode("latin-1"), len(body))  # fmt: skip
        request = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method.encode("ascii"), path.encode("latin-1"), self._head, length)
        if body:
            request += body
        async with asyncio.timeout(timeout_s), self._slots:
            while True:
                conn, reused = await self._connection()
                try:
                    return await self._exchange(conn, request)
                except ConnectionResetError:
                    if not (reused and not conn.received):
                        raise  # a fresh connection, or the server started answering: not a keep-alive race

    async def _connection(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn, False

    async def _exchange(self, conn: _Connection, request: bytes) -> Response:
        assert conn.transport is not None
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        conn.begin(waiter)
        try:
            conn.transport.write(request)
            response = await waiter
        except BaseException:  # a timeout, a cancellation, a broken reply: the connection cannot carry another
            conn.abort()
            raise
        if conn.reusable and not self._closed:
            self._idle.append(conn)
        else:
            conn.abort()
        return response

    async def close(self) -> None:
        """Ends the idle connections now and each busy one when its exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
