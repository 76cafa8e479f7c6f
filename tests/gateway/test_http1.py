"""gateway.http1 against a scripted raw server: framing, keep-alive reuse and its race, limits, errors, timeouts."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from gateway.http1 import Http1Pool, IncompleteReply, ReplyError

pytestmark = pytest.mark.anyio
Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter


def reply(body: bytes, *, status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{headers}\r\n".encode() + body


@dataclass
class Seen:
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)  # each whole request, head and body
    eof: asyncio.Event = field(default_factory=asyncio.Event)  # a connection was closed by the client


# (request, its index on its connection, the connection's reader and writer) -> bytes to send; None: close unanswered
Script = Callable[[bytes, int, Reader, Writer], Awaitable[bytes | None]]


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handle(reader: Reader, writer: Writer) -> None:
        seen.connections += 1
        seen.open_now += 1
        seen.most_open = max(seen.most_open, seen.open_now)
        try:
            for k in range(1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    seen.eof.set()
                    return
                lines = head.lower().split(b"\r\n")
                length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                seen.requests.append(request)
                out = await script(request, k, reader, writer)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
        finally:
            seen.open_now -= 1
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", seen
    finally:
        srv.close()


async def echo(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes:
    return reply(request.partition(b"\r\n\r\n")[2] or b"{}", headers="content-type: application/json\r\n")


async def test_a_request_is_one_well_formed_message_and_connections_are_reused() -> None:
    async with server(echo) as (origin, seen):
        pool = Http1Pool(origin, headers={"Authorization": "Bearer k"})
        first = await pool.request("POST", "/v1/chat/completions", b'{"a":1}', 5)
        second = await pool.request("GET", "/v1/models", None, 5)
        await pool.close()
    assert (first.status, first.body, first.header("Content-Type")) == (200, b'{"a":1}', "application/json")
    assert second.body == b"{}"
    assert seen.connections == 1  # keep-alive: the second request rode the first's connection
    head, _, body = seen.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1" and body == b'{"a":1}'
    port = origin.rsplit(":", 1)[1]
    for expected in (f"Host: 127.0.0.1:{port}", "Authorization: Bearer k", "Content-Length: 7",
                     "Content-Type: application/json", "Accept-Encoding: identity"):  # fmt: skip
        assert expected.encode() in lines
    assert not any(line.lower().startswith(b"content-length") for line in seen.requests[1].split(b"\r\n"))


async def test_chunked_eof_delimited_and_compressed_replies_are_read_whole() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes:
        if b"/chunked" in request:
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        if b"/gzip" in request:
            return reply(gzip.compress(b"zipped"), headers="content-encoding: gzip\r\n")
        if b"/br" in request:
            return reply(b"\x00\x01", headers="content-encoding: br\r\n")
        # no length: the body ends with the connection
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        return None

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin)
        assert (await pool.request("GET", "/chunked", None, 5)).body == b"hello world"
        assert (await pool.request("GET", "/gzip", None, 5)).body == b"zipped"
        assert (await pool.request("GET", "/eof", None, 5)).body == b"until the end"
        with pytest.raises(ReplyError, match="br-encoded"):
            await pool.request("GET", "/br", None, 5)
        await pool.close()
    assert seen.connections == 2  # the EOF-delimited reply used its connection up


async def test_after_close_a_connection_in_use_is_not_kept() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes:
        await asyncio.sleep(0.1)
        return reply(b"ok")

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin)
        call = asyncio.ensure_future(pool.request("GET", "/", None, 5))
        await asyncio.sleep(0.05)
        await pool.close()
        assert (await call).body == b"ok"
        await asyncio.wait_for(seen.eof.wait(), 5)  # closed once its exchange ended


async def test_connection_close_and_http_1_0_replies_are_not_reused() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes:
        if b"/old" in request:
            return b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
        return reply(b"ok", headers="connection: close\r\n")

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin)
        for path in ("/close", "/close", "/old", "/old"):
            assert (await pool.request("GET", path, None, 5)).body == b"ok"
        await pool.close()
    assert seen.connections == 4


async def test_a_reused_connection_closed_before_any_reply_byte_is_retried_on_a_new_one() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes | None:
        return reply(b"ok") if k == 0 else None  # the second request on a connection: closed, unanswered

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin)
        for _ in range(3):
            assert (await pool.request("POST", "/x", b"{}", 5)).body == b"ok"
        await pool.close()
    assert seen.connections == 3 and len(seen.requests) == 5  # requests 2 and 3 each retried once


async def test_a_fresh_connection_closed_without_a_reply_is_an_error_not_a_loop() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> None:
        return None

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin)
        with pytest.raises(ConnectionResetError):
            await pool.request("POST", "/x", b"{}", 5)
    assert seen.connections == 1


async def test_cut_short_and_malformed_replies_are_errors() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes | None:
        if b"/short" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
            return None
        return b"NOT HTTP AT ALL\r\n\r\n"

    async with server(script) as (origin, _):
        pool = Http1Pool(origin)
        with pytest.raises(IncompleteReply):
            await pool.request("GET", "/short", None, 5)
        with pytest.raises(ReplyError, match="malformed"):
            await pool.request("GET", "/bad", None, 5)


async def test_refused_connections_are_oserrors() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        origin = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(OSError):
        await Http1Pool(origin).request("GET", "/", None, 5)


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_timeout_or_a_cancellation_closes_the_connection(how: str) -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> None:
        assert await reader.read() == b""  # waits, never answering, until the client closes the connection
        seen.eof.set()

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin)
        call = asyncio.ensure_future(pool.request("POST", "/slow", b"{}", 0.2 if how == "timeout" else 30))
        if how == "timeout":
            with pytest.raises(TimeoutError):
                await call
        else:
            await asyncio.sleep(0.1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        await asyncio.wait_for(seen.eof.wait(), 5)  # the server saw the connection go


async def test_at_most_limit_connections_are_open() -> None:
    async def script(request: bytes, k: int, reader: Reader, writer: Writer) -> bytes:
        await asyncio.sleep(0.05)
        return reply(b"ok")

    async with server(script) as (origin, seen):
        pool = Http1Pool(origin, limit=2)
        replies = await asyncio.gather(*(pool.request("GET", "/", None, 5) for _ in range(6)))
        await pool.close()
    assert [r.body for r in replies] == [b"ok"] * 6
    assert seen.most_open == 2 and seen.connections == 2


def test_only_plain_http_origins_and_at_least_one_connection() -> None:
    for bad in ("https://example.com", "example.com:80", "http://"):
        with pytest.raises(ValueError, match="http://host"):
            Http1Pool(bad)
    with pytest.raises(ValueError, match="limit"):
        Http1Pool("http://127.0.0.1:1", limit=0)
    with pytest.raises(ValueError, match="line break"):
        Http1Pool("http://127.0.0.1:1", headers={"Authorization": "Bearer k\r\nX-Injected: 1"})


async def test_a_request_target_cannot_smuggle_a_second_request() -> None:
    with pytest.raises(ValueError, match="request target"):
        await Http1Pool("http://127.0.0.1:1").request("GET", "/x HTTP/1.1\r\nHost: evil", None, 5)


def test_on_uvloop_as_the_gateway_serves() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[list[bytes], int]:
        async with server(echo) as (origin, seen):
            pool = Http1Pool(origin)
            replies = [(await pool.request("POST", "/x", b'{"k":%d}' % k, 5)).body for k in range(3)]
            await pool.close()
        return replies, seen.connections

    replies, connections = uvloop.run(main())
    assert replies == [b'{"k":0}', b'{"k":1}', b'{"k":2}'] and connections == 1
