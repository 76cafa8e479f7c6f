"""gateway.api.sse: framing events for the client, a finished completion (gateway.service.render's chunks) sent as an
event stream that the accumulator reads back whole, and the error event that ends a stream failing midway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from gateway.api.sse import DONE, error_event, events, relay
from gateway.service.render import completion_chunks
from gateway.upstream.events import StreamAccumulator
from gateway.upstream.providers import UpstreamError

pytestmark = pytest.mark.anyio


def test_a_ranked_completion_streamed_round_trips_through_the_accumulator() -> None:
    completion = {
        "id": "chatcmpl-rg-1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "best"},
                "finish_reason": "stop",
                "criteria_results": {"rm": {"status": "success", "score": 1.5}},
            },
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            },
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "rewardgate": {"log_id": "log-1"},
    }
    stream = events(completion_chunks(completion, include_usage=True))
    framed = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    assert framed[-1] == DONE
    parsed = [json.loads(e[6:]) for e in framed[:-1]]
    assert all(p["object"] == "chat.completion.chunk" and p["id"] == "chatcmpl-rg-1" for p in parsed)
    assert parsed[1]["choices"][0]["criteria_results"] == {"rm": {"status": "success", "score": 1.5}}
    assert parsed[1]["rewardgate"] == {"log_id": "log-1"}
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["total_tokens"] == 7
    acc = StreamAccumulator()
    acc.feed(stream)
    assert [c["message"] for c in acc.choices()] == [c["message"] for c in completion["choices"]]
    assert [c["finish_reason"] for c in acc.choices()] == ["stop", "tool_calls"]
    without_usage = list(completion_chunks(completion, include_usage=False))
    assert len(without_usage) == len(parsed) - 1


def test_error_event_is_one_data_event_with_the_envelope() -> None:
    body = {"error": {"message": "boom", "type": "api_error", "param": None, "code": "upstream_error"}}
    event = error_event(body)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and json.loads(event[6:]) == body


async def test_relay_ends_a_failing_stream_with_one_error_event() -> None:
    async def upstream() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise UpstreamError(502, "connection reset mid-stream")

    out = [piece async for piece in relay(upstream())]
    assert out[0] == b"data: 1\n\n" and len(out) == 2
    assert json.loads(out[1][6:])["error"]["code"] == "upstream_error"
