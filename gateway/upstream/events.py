"""Reading an upstream's server-sent event stream: regrouping its bytes at event boundaries (so a relay never
sends half an event, and an error event can follow a whole one), and rebuilding the choices of a streamed chat
completion from its `chat.completion.chunk` events (so `store: true` works with `stream: true`).

Pure: no I/O; imports nothing from the project.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


async def whole_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The same bytes, regrouped so that every piece ends at an event boundary (a trailing partial event, which
    no client could parse anyway, is forwarded when the stream ends)."""
    pending = b""
    try:
        async for chunk in chunks:
            pending += chunk
            cut = _after_last_boundary(pending)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
        if pending:
            yield pending
    finally:  # closing this generator closes the upstream's now, not whenever it is garbage-collected
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()


def _after_last_boundary(data: bytes) -> int:
    cut = 0
    for boundary in _BOUNDARIES:
        at = data.rfind(boundary)
        if at >= 0:
            cut = max(cut, at + len(boundary))
    return cut


class StreamAccumulator:
    """Rebuilds choices from the `chat.completion.chunk` events of a stream: feed it the raw bytes as they pass.
    Unparsable events are counted, not raised: the bytes still reach the client unchanged."""

    def __init__(self) -> None:
        self._pending = b""
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.unparsable = 0
        self.done = False
        self.deltas = 0  # chunks that carried generated text (content, refusal or tool-call arguments)

    def feed(self, data: bytes) -> None:
        self._pending += data
        *events, self._pending = self._pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n")
        for event in events:
            self._take(event)

    def _take(self, event: bytes) -> None:
        lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return
        payload = b"\n".join(lines)
        if payload.strip() == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            self.unparsable += 1
            return
        if not isinstance(chunk, dict):
            self.unparsable += 1
            return
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for part in chunk.get("choices") or ():
            if isinstance(part, dict) and isinstance(part.get("index", 0), int):
                self._merge(part)

    def _merge(self, part: Mapping[str, Any]) -> None:
        choice = self._choices.setdefault(
            part.get("index", 0), {"message": {"role": "assistant", "content": None}, "finish_reason": None}
        )
        if part.get("finish_reason") is not None:
            choice["finish_reason"] = part["finish_reason"]
        delta = part.get("delta")
        if not isinstance(delta, dict):
            return
        message = choice["message"]
        if isinstance(delta.get("role"), str):
            message["role"] = delta["role"]
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str):
                message[key] = (message.get(key) or "") + delta[key]
        if delta.get("content") or delta.get("refusal") or delta.get("tool_calls"):
            self.deltas += 1
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                _merge_tool_call(message.setdefault("tool_calls", []), call)

    def choices(self) -> list[dict[str, Any]]:
        """The choices seen so far, by index, as a non-streamed completion has them."""
        return [{"index": i, **self._choices[i]} for i in sorted(self._choices)]


def _merge_tool_call(calls: list[dict[str, Any]], delta: Mapping[str, Any]) -> None:
    position = delta.get("index", len(calls))
    if not isinstance(position, int) or position < 0 or position > len(calls):
        return
    if position == len(calls):
        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[position]
    if isinstance(delta.get("id"), str):
        call["id"] = delta["id"]
    if isinstance(delta.get("type"), str):
        call["type"] = delta["type"]
    function = delta.get("function")
    if isinstance(function, dict):
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                call["function"][key] += function[key]
