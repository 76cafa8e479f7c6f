"""Cross-request dynamic batching (TEI's design): a bounded queue, a token budget, a maximum wait.

Owns `Batcher` (asyncio, one loop task per model, and a task per pass being scored: one at a time, or
`passes_in_flight` for an engine with several worker threads), `plan_batches` (the length-sorted bucketing shared
with the GPU benchmark) and `BatchedModel` (an engine + its batcher, servable by the registry).
Must not import torch: the engine is injected as an async callable that scores on its worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.formats import Message

from .errors import InferenceError, OverloadedError, RewardServerError, UnavailableError
from .registry import ScoreResult

logger = logging.getLogger(__name__)

TokenIds = tuple[int, ...]
ScoreFn = Callable[[Sequence[TokenIds]], Awaitable[list[float]]]
# A dispatch cycle takes at most this many budgets' worth of queued tokens, so one cycle stays short and
# requests arriving meanwhile are not starved by a long backlog sorted ahead of them.
_WINDOW_BATCHES = 4


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_tokens: int = 16384  # tokens a forward pass computes (rows x longest row; see shared_prefix_min)
    max_batch_size: int = 256  # conversations per forward pass
    max_wait_s: float = 0.002  # how long the oldest request may wait for others to join its batch
    max_queue_requests: int = 512  # requests admitted (queued or being scored); more get 429
    max_batch_requests: int | None = None  # None merges across requests; 1 = one request at a time
    keep_requests_together: bool = False  # a request's rows in one pass where they fit (shared-prompt engines)
    # > 0: the engine computes a prompt of at least this many tokens shared by a request's rows once, so the budget
    # counts each such prompt once plus every row's own tokens (what the passes compute), not rows x longest row
    shared_prefix_min: int = 0
    # The engine packs a pass's rows with no pads (reward_serving.packing): a pass costs its real tokens, and rows
    # are sorted by length only within arrival-ordered chunks of two passes' tokens (plan_batches)
    packed_rows: bool = False
    # Forward passes scored at once: the engine's worker threads (`TorchRewardEngine`'s pass_workers). A free worker
    # takes the next pass, or the next window when this one's passes are all out.
    passes_in_flight: int = 1
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if min(self.max_batch_tokens, self.max_batch_size, self.max_queue_requests, self.passes_in_flight) < 1:
            raise ValueError("batch tokens, batch size, queue size and passes in flight must be positive")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")


@dataclass(frozen=True)
class BatchStats:
    """What one forward pass did; the metrics module turns these into Prometheus series."""

    size: int  # conversations
    requests: int  # distinct client requests merged into it
    tokens: int  # real tokens
    padded_tokens: int  # what the pass computed, pads included: rows x longest row, or BatchCost's shared prompts
    queue_seconds: float  # how long its oldest request waited before the pass started
    inference_seconds: float


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_size: int,
    groups: Sequence[int] | None = None,
    prefixes: Sequence[int] | None = None,
    packed: bool = False,
) -> list[list[int]]:
    """Indices grouped into batches: sorted by length, each batch's cost within the budget.

    Sorting makes neighbours similar in length, so right padding wastes little and more rows fit the
    budget. A row longer than the budget alone still gets a batch of its own. With `groups` (a group id
    per row, e.g. its request), the rows of a group stay next to each other, groups ordered by their
    shortest row: an engine that computes a shared prompt once wants a request's candidates in one pass.
    A batch costs rows x longest row (right padding); with `prefixes` too (per row, the leading tokens it shares
    with its group's other rows, 0 for none) it costs what a prompt-sharing engine computes (`BatchCost`).
    `packed` (an engine that computes no pads): a batch costs its rows' tokens (with `prefixes`, each group's
    shared prompt once: a prompt tree), and rows are taken in their order (arrival) in chunks of two budgets' tokens,
    sorted by length within a chunk (with `groups`, a group's rows together, groups by the tokens they compute): a
    pass's packed rows stay alike in length (packed attention still pads each to the pass's longest), and no row
    waits behind more than about two passes of rows that came after it (sorting a whole window put a long row's
    request last, every time).
    """
    shared = prefixes if prefixes is not None and groups is not None else [0] * len(lengths)
    group_of = groups if groups is not None else range(len(lengths))
    if packed:
        chunks, computed = [], BatchCost(packed=True)  # tokens computed in arrival order: a shared prompt once
        for i, length in enumerate(lengths):
            chunks.append(computed.tokens // (2 * max_batch_tokens))
            computed.add(length, shared[i], group_of[i])
        if groups is None:
            order = sorted(range(len(lengths)), key=lambda i: (chunks[i], lengths[i]))
        else:  # a group in the chunk of its first row, its rows together, groups by the tokens they compute
            first: dict[int, int] = {}
            size: dict[int, int] = {}
            for i, group in enumerate(groups):
                first.setdefault(group, chunks[i])
                size[group] = size.get(group, shared[i]) + lengths[i] - shared[i]
            order = sorted(
                range(len(lengths)), key=lambda i: (first[groups[i]], size[groups[i]], groups[i], lengths[i])
            )
    elif groups is None:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    else:
        shortest: dict[int, int] = {}
        for i, group in enumerate(groups):
            shortest[group] = min(shortest.get(group, lengths[i]), lengths[i])
        order = sorted(range(len(lengths)), key=lambda i: (shortest[groups[i]], groups[i], lengths[i]))
    runs: list[list[int]] = []  # a group's rows (or, without groups, each row alone), in planning order
    for index in order:
        if groups is not None and runs and group_of[runs[-1][-1]] == group_of[index]:
            runs[-1].append(index)
        else:
            runs.append([index])
    batches: list[list[int]] = []
    current: list[int] = []
    cost = BatchCost(packed=packed)
    for run in runs:
        trial = cost.copy()
        for index in run:
            trial.add(lengths[index], shared[index], group_of[index])
        if current and (trial.tokens > max_batch_tokens or len(current) + len(run) > max_batch_size):
            batches.append(current)  # the group starts the next pass rather than being split across two
            current, cost = [], BatchCost(packed=packed)
        for index in run:  # a group too big for one pass is split, row by row
            row = (lengths[index], shared[index], group_of[index])
            if current and (cost.adding(*row) > max_batch_tokens or len(current) + 1 > max_batch_size):
                batches.append(current)
                current, cost = [], BatchCost(packed=packed)
            current.append(index)
            cost.add(*row)
    if current:
        batches.append(current)
    return batches


@dataclass
class BatchCost:
    """The tokens one pass computes. Rows without a shared prefix: right-padded, rows x longest. Rows with one (a
    prompt-sharing engine's groups): every group's prompt once, padded to the longest prompt, plus every such
    row's own tokens, padded to the longest of them (`TorchRewardEngine._score_shared_prefixes`). `packed`: the
    rows' own tokens, no pads, each shared prompt once (reward_serving.packing's prompt trees)."""

    packed: bool = False
    real: int = 0
    computed: int = 0  # packed: the real tokens less each shared prompt's repeats (a prompt tree holds it once)
    plain_rows: int = 0
    plain_width: int = 0
    shared_rows: int = 0
    tail_width: int = 0
    prompt_width: int = 0
    groups: set[int] = field(default_factory=set)

    def adding(self, length: int, prefix: int, group: int) -> int:
        """The cost with one more row."""
        if self.packed:
            return self.computed + length - (prefix if group in self.groups else 0)
        if not prefix:
            return (self.plain_rows + 1) * max(self.plain_width, length) + self._shared()
        prompts = len(self.groups) + (group not in self.groups)
        shared = prompts * max(self.prompt_width, prefix) + (self.shared_rows + 1) * max(
            self.tail_width, length - prefix
        )
        return self.plain_rows * self.plain_width + shared

    def add(self, length: int, prefix: int, group: int) -> None:
        self.computed += length - (prefix if prefix and group in self.groups else 0)
        self.real += length
        if not prefix:
            self.plain_rows, self.plain_width = self.plain_rows + 1, max(self.plain_width, length)
            return
        self.groups.add(group)
        self.shared_rows += 1
        self.prompt_width = max(self.prompt_width, prefix)
        self.tail_width = max(self.tail_width, length - prefix)

    def copy(self) -> BatchCost:
        return dataclasses.replace(self, groups=set(self.groups))

    @property
    def tokens(self) -> int:
        if self.packed:
            return self.computed
        return self.plain_rows * self.plain_width + self._shared()

    def _shared(self) -> int:
        return len(self.groups) * self.prompt_width + self.shared_rows * self.tail_width


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one token of its own."""
    limit = min(len(row) for row in rows) - 1
    first = rows[0]
    for position in range(limit):
        if any(row[position] != first[position] for row in rows[1:]):
            return position
    return max(0, limit)


@dataclass(eq=False)
class _Request:
    items: tuple[TokenIds, ...]
    future: asyncio.Future[list[float]]
    enqueued_at: float
    tokens: int
    scores: list[float] = field(default_factory=list)
    left: int = 0
    queued: bool = True
    cancelled: bool = False


class Batcher:
    """Merges the items of concurrent `submit` calls into length-sorted batches under a token budget."""

    def __init__(
        self,
        score: ScoreFn,
        config: BatcherConfig | None = None,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._score = score
        self.config = config or BatcherConfig()
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued_tokens = 0
        self._admitted = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._window: list[_Request] = []  # taken from the queue, its passes not all started
        self._slots = asyncio.Semaphore(self.config.passes_in_flight)  # a pass holds one while it is scored
        self._passes: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def queue_size(self) -> int:
        """Requests admitted and not finished: waiting in the queue or being scored."""
        return self._admitted

    @property
    def closing(self) -> bool:
        return self._closing

    def check_capacity(self) -> None:
        """Raise now, before a caller spends work on a request the queue would refuse."""
        if self._closing:
            raise UnavailableError("the model is being unloaded; retry", retry_after=self.config.retry_after_s)
        if self._admitted >= self.config.max_queue_requests:
            raise OverloadedError(
                f"reward server overloaded: {self._admitted} requests queued (max_queue_requests)",
                retry_after=self.config.retry_after_s,
            )

    async def submit(self, items: Sequence[TokenIds]) -> list[float]:
        """Scores for `items`, in order. Cancelling the caller drops its items not yet scored."""
        self.check_capacity()
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(tuple(items), loop.create_future(), loop.time(), sum(len(x) for x in items))
        request.scores, request.left = [0.0] * len(items), len(items)
        self._queue.append(request)
        self._queued_tokens += request.tokens
        self._admitted += 1
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="rewardgate-batcher")
        self._wakeup.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled = True
            request.future.cancel()
            if request.queued:
                self._queue.remove(request)
                self._queued_tokens -= request.tokens
            raise
        finally:
            self._admitted -= 1

    async def aclose(self) -> None:
        """Refuse new requests, finish the admitted ones, stop the loop task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._passes:
            await asyncio.wait(self._passes)

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                await self._slots.acquire()  # a worker is free: its pass comes from the next window
                self._slots.release()
                if not self._queue:  # the requests waiting were cancelled meanwhile
                    continue
                await self._gather()
                self._window = self._take_window()
                await self._dispatch(self._window)
                self._window = []
        finally:  # only finds work left after a crash or a cancelled task: fail it, never hang it
            for request in [*self._window, *self._queue]:
                if not request.future.done():
                    request.future.set_exception(UnavailableError("the batcher stopped; retry"))

    def _merging(self) -> bool:
        limit = self.config.max_batch_requests
        return limit is None or len(self._queue) < limit

    async def _gather(self) -> None:
        """Let others join until the budget fills or the oldest request has waited max_wait_s."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].enqueued_at + self.config.max_wait_s
        while self._queue and self._queued_tokens < self.config.max_batch_tokens and self._merging():
            timeout = deadline - loop.time()
            if timeout <= 0 or self._closing:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return

    def _take_window(self) -> list[_Request]:
        limit_tokens = self.config.max_batch_tokens * _WINDOW_BATCHES
        limit_requests = self.config.max_batch_requests
        window: list[_Request] = []
        tokens = 0
        while self._queue and (not window or tokens + self._queue[0].tokens <= limit_tokens):
            if limit_requests is not None and len(window) >= limit_requests:
                break
            request = self._queue.popleft()
            request.queued = False
            self._queued_tokens -= request.tokens
            if not request.cancelled:
                window.append(request)
                tokens += request.tokens
        return window

    async def _dispatch(self, window: list[_Request]) -> None:
        """Plan the window's passes and start each as a worker frees up (`passes_in_flight`); returns once the last
        has started. A request cancelled before its pass starts has its rows left out of it."""
        items = [(request, i, ids) for request in window for i, ids in enumerate(request.items)]
        lengths = [len(ids) for _, _, ids in items]
        config = self.config
        groups = [id(request) for request, _, _ in items] if config.keep_requests_together else None
        shared = {id(r): self._shared_prefix(r.items) for r in window} if groups is not None else {}
        prefixes = [shared.get(id(request), 0) for request, _, _ in items]
        plan = plan_batches(
            lengths, config.max_batch_tokens, config.max_batch_size, groups, prefixes, packed=config.packed_rows
        )
        for batch in plan:
            await self._slots.acquire()
            live = [items[j] for j in batch if not items[j][0].cancelled]  # a cancelled request's work is dropped
            if not live:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._score_pass(live, shared))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)

    async def _score_pass(self, live: list[tuple[_Request, int, TokenIds]], shared: dict[int, int]) -> None:
        """One forward pass on an engine worker; its scores go to their requests. Holds a slot until done."""
        loop = asyncio.get_running_loop()
        try:
            cost = BatchCost(packed=self.config.packed_rows)
            for request, _, ids in live:
                cost.add(len(ids), shared.get(id(request), 0), id(request))
            started = loop.time()
            oldest = min(request.enqueued_at for request, _, _ in live)
            try:
                scores = await self._score([ids for _, _, ids in live])
                if len(scores) != len(live):
                    raise InferenceError(f"engine returned {len(scores)} scores for {len(live)} conversations")
            except Exception as exc:  # the engine failed this pass: fail its requests, keep serving
                self._fail({request for request, _, _ in live}, exc)
                return
            for (request, i, _), score in zip(live, scores, strict=True):
                if request.future.done():
                    continue
                request.scores[i] = float(score)
                request.left -= 1
                if request.left == 0:
                    request.future.set_result(request.scores)
            if self._on_batch is not None:
                lengths = [len(ids) for _, _, ids in live]
                self._on_batch(
                    BatchStats(
                        size=len(live),
                        requests=len({id(r) for r, _, _ in live}),
                        tokens=sum(lengths),
                        padded_tokens=cost.tokens,
                        queue_seconds=started - oldest,
                        inference_seconds=loop.time() - started,
                    )
                )
        finally:
            self._slots.release()

    def _shared_prefix(self, rows: Sequence[TokenIds]) -> int:
        """The prompt a request's rows share, where the engine computes it once; else 0."""
        if self.config.shared_prefix_min <= 0 or len(rows) < 2:
            return 0
        prefix = common_prefix(rows)
        return prefix if prefix >= self.config.shared_prefix_min else 0

    @staticmethod
    def _fail(requests: set[_Request], exc: Exception) -> None:
        logger.error("scoring a batch failed", exc_info=exc)
        error = exc if isinstance(exc, RewardServerError) else InferenceError(f"scoring failed: {exc}")
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)


class TokenEngine(Protocol):
    """What `BatchedModel` needs from an engine: render on any thread, score on its own worker thread.

    An engine that also has `shares_prefixes = True` (it computes a prompt shared by rows of one pass once)
    gets each request's rows planned into one pass where the budget allows; one with `packing = True` instead (it
    computes no pads) gets passes budgeted in real tokens, planned in arrival-ordered chunks
    (`BatcherConfig.packed_rows`)."""

    @property
    def memory_bytes(self) -> int: ...

    def render(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[TokenIds]: ...

    async def score_tokens(self, batch: Sequence[TokenIds]) -> list[float]: ...

    def close(self) -> None: ...


class BatchedModel:
    """One loaded model behind its batcher: the registry's `Servable` for the torch engine."""

    def __init__(
        self,
        engine: TokenEngine,
        config: BatcherConfig | None = None,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.engine = engine
        if getattr(engine, "shares_prefixes", False):  # its candidates share a prompt: keep them in one pass, and
            # count that prompt once in the budget, as the engine computes it (packed: with no pads either)
            config = dataclasses.replace(
                config or BatcherConfig(),
                keep_requests_together=True,
                shared_prefix_min=int(getattr(engine, "min_shared_prefix", 0)),
                packed_rows=bool(getattr(engine, "packing", False)),
            )
        elif getattr(engine, "packing", False):  # no pads computed: budget real tokens, arrival-ordered chunks
            # (an engine whose packing fails falls back to padded passes of this plan, slower, never wrong)
            config = dataclasses.replace(config or BatcherConfig(), packed_rows=True)
        workers = int(getattr(engine, "pass_workers", 1))
        if workers > 1:  # the engine scores that many passes at once, each on its own worker thread
            config = dataclasses.replace(config or BatcherConfig(), passes_in_flight=workers)
        self.batcher = Batcher(engine.score_tokens, config, on_batch=on_batch)

    @property
    def memory_bytes(self) -> int:
        return self.engine.memory_bytes

    @property
    def queue_size(self) -> int:
        return self.batcher.queue_size

    async def score(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> ScoreResult:
        self.batcher.check_capacity()  # refuse before tokenizing, not after
        # Tokenizing is CPU work: off the event loop, and off the worker thread that feeds the model.
        ids = await asyncio.to_thread(self.engine.render, conversations, tools)
        scores = await self.batcher.submit(ids)
        return ScoreResult(tuple(scores), sum(len(x) for x in ids))

    async def aclose(self) -> None:
        await self.batcher.aclose()
        await asyncio.to_thread(self.engine.close)
