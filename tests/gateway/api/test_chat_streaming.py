"""Streaming through the gateway over ASGI, against the fake upstream on 127.0.0.1 and the embedded reward server:
`store: true` with a streamed pass-through, an upstream that dies mid-stream, and best-of-N with `stream: true`
read by the real `openai` package."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.fakes import MESSAGES, STREAM_TEXT, FakeUpstream, Gateway

pytestmark = pytest.mark.anyio
CRITERIA = {"op-criteria": '["tiny-rm"]'}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def openai_client(gw: Gateway) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app))
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="unused", http_client=http)


async def test_a_stored_stream_passes_the_bytes_through_and_stores_the_completion(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    body = chat("stream", stream=True, store=True, metadata={"user": "u1"})
    async with gw.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        received = b"".join([piece async for piece in response.aiter_bytes()])
    assert received == b"".join(upstream.sent)
    assert "store" not in upstream.bodies[-1] and "metadata" not in upstream.bodies[-1]
    (log,) = (await gw.store.list_logs()).logs
    assert log.metadata == {"user": "u1"} and log.request == body
    (candidate,) = log.candidates
    assert candidate.status == "ok" and candidate.finish_reason == "stop"
    assert candidate.message == {"role": "assistant", "content": "".join(STREAM_TEXT)}


async def test_an_upstream_dying_mid_stream_ends_with_an_error_event(gw: Gateway) -> None:
    body = chat("break-stream", stream=True, store=True)
    async with gw.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200  # the status went out with the first event
        received = b"".join([piece async for piece in response.aiter_bytes()])
    events = [e for e in received.split(b"\n\n") if e]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == STREAM_TEXT[0]
    error = json.loads(events[-1][6:])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "connection_error"
    assert b"[DONE]" not in received
    (log,) = (await gw.store.list_logs()).logs  # what arrived is kept, marked as failed
    (candidate,) = log.candidates
    assert candidate.status == "error" and candidate.error is not None and "connection_error" in candidate.error
    assert candidate.message == {"role": "assistant", "content": STREAM_TEXT[0]}


async def test_the_openai_package_raises_on_the_mid_stream_error_event(gw: Gateway) -> None:
    async with openai_client(gw) as client:
        stream = await client.chat.completions.create(model="break-stream", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        seen: list[str] = []
        with pytest.raises(openai.APIError, match="payload is not completed"):
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        assert seen == [STREAM_TEXT[0]]


async def test_best_of_n_streamed_gives_the_same_ranking_as_unstreamed(gw: Gateway, upstream: FakeUpstream) -> None:
    async with openai_client(gw) as client:
        stream = await client.chat.completions.create(
            model="ok",
            messages=MESSAGES,  # type: ignore[arg-type]
            n=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=CRITERIA,
        )
        chunks = [chunk async for chunk in stream]
    assert all(call.get("stream") is None for call in upstream.bodies)  # candidates are fetched whole
    produced = [c["message"]["content"] for c in upstream.responses[0]["choices"]]
    text: dict[int, str] = {}
    finished: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finished[choice.index] = choice.model_extra or {}
    assert sorted(text) == [0, 1, 2, 3]
    order = [finished[i]["rewardgate"]["candidate_index"] for i in range(4)]
    assert [text[i] for i in range(4)] == [produced[k] for k in order]
    scores = [finished[i]["rewardgate"]["score"] for i in range(4)]
    assert scores == sorted(scores, reverse=True)
    assert all(finished[i]["criteria_results"]["tiny-rm"]["status"] == "success" for i in range(4))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
