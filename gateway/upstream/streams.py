"""One best-of-N candidate read from its own upstream stream while it is generated, so that it can be looked at
part-way (its tokens so far, its partial message) and cancelled alone: cancelling closes that upstream stream (the
HTTP response, or LiteLLM's stream and so the local generator), and the provider stops generating it.

Budgeted best-of-N (gateway.service.budget) opens one per candidate through `Router.candidate_stream`. The stream
is read by a task of its own from `start()` to its end, not only when the service asks: a provider goes on
generating while the partial answers are scored, and those tokens are counted too (they were paid for).

Tokens: the chunks that carried generated text (OpenAI, vLLM and the local provider send one token per chunk); when
the stream ends with a `usage` object (`stream_options.include_usage`), its `completion_tokens` wins. A cancelled
stream has no usage: its count is the chunks received before it was closed.

Knows nothing of criteria, the store or the services. Must not import starlette, torch or trainer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from gateway.upstream.events import StreamAccumulator
from gateway.upstream.providers import ProviderError, UpstreamTimeout

logger = logging.getLogger(__name__)


class CandidateStream:
    """A candidate as it streams: `start()` reads it in a task, `reach(t)` waits for t tokens (or its end),
    `message()` is its message so far, `cancel()` closes the upstream stream. `error` is the ProviderError that
    ended it, if one did."""

    def __init__(self, index: int, model: str, chunks: AsyncIterator[bytes], timeout: float) -> None:
        self.index = index
        self.model = model
        self._chunks = chunks
        self._timeout = timeout  # the whole candidate, like one non-streamed call
        self._copy = StreamAccumulator()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._crash: BaseException | None = None  # not a provider's error: a bug, raised to whoever waits
        self.error: ProviderError | None = None
        self.ended = False  # no more tokens will come: finished, failed or cancelled
        self.cancelled = False
        self.started = time.perf_counter()
        self.latency_s = 0.0  # from start to the stream's end

    def __repr__(self) -> str:
        return f"CandidateStream(index={self.index}, tokens={self.tokens}, ended={self.ended})"

    def start(self) -> None:
        self.started = time.perf_counter()
        self._task = asyncio.create_task(self._pump(), name=f"candidate-stream-{self.index}")

    @property
    def tokens(self) -> int:
        usage = self._copy.usage
        if self.finished and usage is not None and isinstance(usage.get("completion_tokens"), int):
            return int(usage["completion_tokens"])
        return self._copy.deltas

    @property
    def finished(self) -> bool:
        """Ended on its own with a finish_reason (not cancelled, not failed)."""
        return self.ended and not self.cancelled and self.error is None and self.finish_reason is not None

    @property
    def finish_reason(self) -> str | None:
        choices = self._copy.choices()
        return choices[0]["finish_reason"] if choices else None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._copy.usage

    def message(self) -> dict[str, Any]:
        """The message so far (a copy): what a partial score reads."""
        choices = self._copy.choices()
        if not choices:
            return {"role": "assistant", "content": ""}
        message = dict(choices[0]["message"])
        if message.get("content") is None and not message.get("tool_calls"):
            message["content"] = ""
        return message

    def choice(self) -> dict[str, Any]:
        """The whole choice of a finished stream, as a non-streamed completion has it."""
        return {"index": self.index, "message": self.message(), "finish_reason": self.finish_reason}

    async def reach(self, tokens: float) -> None:
        """Wait until the candidate has `tokens` tokens or has ended (pass math.inf to wait for its end)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.ended or self.tokens >= tokens)
        if self._crash is not None:
            raise self._crash

    async def cancel(self) -> None:
        """Stop generating: the reading task is cancelled and the upstream stream closed (its `finally`)."""
        if self.ended:
            return
        self.cancelled = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # its end, without taking on its CancelledError
        else:
            await self._close_upstream()
            await self._end()

    async def _pump(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                async for piece in self._chunks:
                    self._copy.feed(piece)
                    async with self._changed:
                        self._changed.notify_all()
                    if self._copy.done:
                        break
        except TimeoutError:
            self.error = UpstreamTimeout(f"{self.model}: the candidate did not finish within {self._timeout:g} s")
        except ProviderError as err:
            self.error = err
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not the provider: kept for whoever waits, and logged
            logger.exception("candidate stream %d failed", self.index)
            self._crash = exc
        finally:
            await asyncio.shield(self._close_upstream())
            await self._end()

    async def _close_upstream(self) -> None:
        if isinstance(self._chunks, AsyncGenerator):
            await self._chunks.aclose()

    async def _end(self) -> None:
        self.latency_s = time.perf_counter() - self.started
        self.ended = True
        async with self._changed:
            self._changed.notify_all()
