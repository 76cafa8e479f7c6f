"""gateway.upstream.events as pure code: regrouping an upstream's bytes at event boundaries, and the accumulator
that rebuilds streamed choices (content, tool calls, usage), including on arbitrary bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.events import StreamAccumulator, whole_events

pytestmark = pytest.mark.anyio


DONE = b"data: [DONE]\n\n"


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices, **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def collect(pieces: list[bytes]) -> list[bytes]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return [piece async for piece in whole_events(source())]


async def test_whole_events_regroups_at_boundaries_and_keeps_every_byte() -> None:
    a, b = chunk([{"index": 0, "delta": {"content": "x"}}]), chunk([{"index": 0, "delta": {"content": "y"}}])
    stream = a + b + DONE
    pieces = [stream[:7], stream[7 : len(a) + 3], stream[len(a) + 3 : -4], stream[-4:]]
    out = await collect(pieces)
    assert b"".join(out) == stream
    assert all(piece.endswith(b"\n\n") for piece in out)
    assert out[0] == a  # the first event goes out as soon as it is whole


async def test_whole_events_forwards_a_trailing_partial_event_and_crlf_boundaries() -> None:
    out = await collect([b"data: 1\r\n\r\ndata: 2\r\n\r\nda", b"ta: par"])
    assert out == [b"data: 1\r\n\r\ndata: 2\r\n\r\n", b"data: par"]


async def test_whole_events_closes_its_source_when_closed() -> None:
    closed = []

    async def source() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
        finally:
            closed.append(True)

    events = whole_events(source())
    assert await anext(events) == b"data: 1\n\n"
    await events.aclose()
    assert closed == [True]


def test_accumulator_rebuilds_content_tool_calls_finish_reason_and_usage() -> None:
    acc = StreamAccumulator()
    stream = b"".join(
        [
            chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]),
            chunk([{"index": 1, "delta": {"role": "assistant", "content": None}}]),
            chunk([{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]),
            chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "t1", "function": {"name": "get"}}]}}]),
            chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]),
            chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}}]),
            chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            chunk([{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]),
            chunk([], usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
            DONE,
        ]
    )
    for k in range(0, len(stream), 5):  # fed in pieces that cut events anywhere
        acc.feed(stream[k : k + 5])
    first, second = acc.choices()
    assert first == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello"},
        "finish_reason": "stop",
    }
    assert second["finish_reason"] == "tool_calls" and second["message"]["content"] is None
    assert second["message"]["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]
    assert acc.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert acc.done and acc.unparsable == 0


def test_accumulator_counts_garbage_instead_of_raising() -> None:
    acc = StreamAccumulator()
    acc.feed(b"data: {not json\n\ndata: [1, 2]\n\n: a comment\n\nevent: ping\n\n")
    acc.feed(chunk([{"index": 0, "delta": {"content": "ok"}}]))
    assert acc.unparsable == 2
    assert acc.choices()[0]["message"]["content"] == "ok"


@given(st.binary(max_size=400))
def test_accumulator_never_raises(data: bytes) -> None:
    acc = StreamAccumulator()
    acc.feed(data)
    acc.feed(b"\n\n")
    acc.choices()
