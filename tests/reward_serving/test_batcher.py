"""The dynamic batcher with a fake scorer: merging, budget, sorting, max wait, bounded queue, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.formats import Message, parse_message
from gateway.reward_serving.batcher import BatchCost, BatchedModel, Batcher, BatcherConfig, BatchStats, plan_batches
from gateway.reward_serving.errors import InferenceError, OverloadedError, UnavailableError, error_reply

from .fakes import FakeEngine, FakeScorer, until

pytestmark = pytest.mark.anyio


def rows(*lengths: int, start: int = 1) -> list[tuple[int, ...]]:
    """Rows of the given lengths whose ids are unique across calls with different `start`s."""
    return [tuple(range(start + 1000 * i, start + 1000 * i + n)) for i, n in enumerate(lengths)]


def expected(items: list[tuple[int, ...]]) -> list[float]:
    return [float(sum(r)) for r in items]


def test_plan_batches_sorts_by_length_and_respects_the_padded_budget() -> None:
    lengths = [5, 1, 9, 3, 3, 8, 2]
    plan = plan_batches(lengths, max_batch_tokens=12, max_batch_size=3)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in plan for i in b]
    assert flat == sorted(lengths)
    for batch in plan:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 12
    assert plan_batches([50, 2], max_batch_tokens=10, max_batch_size=8) == [[1], [0]]  # too long: alone


def test_plan_batches_can_keep_each_group_together_in_length_order() -> None:
    lengths = [9, 2, 8, 3, 7, 1]
    groups = [0, 1, 0, 1, 2, 2]  # request 2 has the shortest row, then request 1, then request 0
    assert plan_batches(lengths, max_batch_tokens=100, max_batch_size=8, groups=groups) == [[5, 4, 1, 3, 2, 0]]
    assert plan_batches(lengths, max_batch_tokens=18, max_batch_size=8, groups=groups) == [[5, 4], [1, 3], [2, 0]]


def test_with_shared_prefixes_the_budget_counts_each_prompt_once() -> None:
    """Best-of-4 with a 300-token prompt and ~40-token answers: padded rows cost 4 x 340 per request, so a 4,096
    budget takes 3 requests per pass; counted as the sharing engine computes (the prompts once, padded to the longest,
    plus every row's own tokens) it takes 8 (8 x 300 + 32 x 40 = 3,680)."""
    lengths = [340] * 40
    groups = [i // 4 for i in range(40)]
    padded = plan_batches(lengths, max_batch_tokens=4096, max_batch_size=256, groups=groups)
    shared = plan_batches(lengths, max_batch_tokens=4096, max_batch_size=256, groups=groups, prefixes=[300] * 40)
    assert [len(b) for b in padded][:3] == [12, 12, 12]
    assert [len(b) for b in shared] == [32, 8]
    for batch in shared:  # every request whole, and the cost within the budget
        assert {groups[i] for i in batch} == {groups[i] for i in range(40) if groups[i] in {groups[j] for j in batch}}
        cost = BatchCost()
        for i in batch:
            cost.add(lengths[i], 300, groups[i])
        assert cost.tokens <= 4096
    # rows without a shared prefix (0) still cost rows x longest, beside the shared ones
    cost = BatchCost()
    for length, prefix, group in [(100, 80, 0), (90, 80, 0), (50, 0, 1), (30, 0, 2)]:
        cost.add(length, prefix, group)
    assert cost.tokens == 1 * 80 + 2 * 20 + 2 * 50


def test_packed_plans_budget_real_tokens_and_sort_only_within_arrival_chunks() -> None:
    """An engine that computes no pads: a pass costs its rows' tokens, and rows are sorted by length only within
    chunks of two budgets' tokens in arrival order, so a late short row never jumps a whole window of long ones."""
    lengths = [3, 9, 2, 4, 8, 1]
    # one chunk (27 tokens < 2 x 18): sorted by length, 1 + 2 + 3 + 4 + 8 = 18 fit a budget that padding would
    # count as 5 x 8 = 40
    assert plan_batches(lengths, max_batch_tokens=18, max_batch_size=8, packed=True) == [[5, 2, 0, 3, 4], [1]]
    # budget 6: chunks of 12 tokens by arrival, [3, 9] then [2, 4, 8] then [1]; sorted within each
    assert plan_batches(lengths, max_batch_tokens=6, max_batch_size=8, packed=True) == [[0], [1], [2, 3], [4], [5]]
    cost = BatchCost(packed=True)
    for length in lengths:
        cost.add(length, 0, 0)
    assert cost.tokens == sum(lengths)


def test_packed_prompt_trees_cost_each_prompt_once_and_keep_a_request_whole() -> None:
    """A packing engine that shares prompts (a decoder's prompt trees): a pass costs its real tokens less every
    repeat of a shared prompt, and a request's rows stay together, groups in arrival chunks by the tokens they
    compute."""
    cost = BatchCost(packed=True)
    for length, prefix, group in [(310, 300, 0), (340, 300, 0), (305, 300, 0), (50, 0, 1), (320, 300, 2)]:
        cost.add(length, prefix, group)
    assert cost.tokens == (300 + 10 + 40 + 5) + 50 + 320
    assert cost.adding(330, 300, 2) == cost.tokens + 30 and cost.adding(330, 300, 3) == cost.tokens + 330
    # three requests: best-of-3 on a 300-token prompt (355 computed), a row alone (50), best-of-2 on 200 (230)
    lengths = [310, 340, 50, 305, 210, 220]
    groups = [0, 0, 1, 0, 2, 2]
    prefixes = [300, 300, 0, 300, 200, 200]
    plan = plan_batches(lengths, 1000, 64, groups, prefixes, packed=True)
    assert plan == [[2, 4, 5, 3, 0, 1]]  # one chunk: the row alone, best-of-2, then best-of-3, each request whole
    plan = plan_batches(lengths, 400, 64, groups, prefixes, packed=True)
    assert plan == [[2, 4, 5], [3, 0, 1]]  # budget 400: 50 + 230 in a pass, best-of-3 (355) whole in the next


async def test_an_engine_that_packs_rows_gets_real_token_passes_in_arrival_chunks() -> None:
    class PackingEngine(FakeEngine):
        packing = True

    model = BatchedModel(PackingEngine(), BatcherConfig(max_batch_tokens=10))
    assert model.batcher.config.packed_rows and not model.batcher.config.keep_requests_together
    await model.aclose()
    scorer = FakeScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=10, packed_rows=True))
    a, b, c = rows(9, 2, start=1), rows(10, 3, start=2), rows(1, start=3)
    results = await asyncio.wait_for(asyncio.gather(batcher.submit(a), batcher.submit(b), batcher.submit(c)), 5)
    assert results == [expected(a), expected(b), expected(c)]
    # chunks of 20 tokens in arrival order: [9, 2, 10] and [3, 1]; by length within each, passes of <= 10 tokens
    assert [[len(row) for row in batch] for batch in scorer.batches] == [[2], [9], [10], [1, 3]]
    await batcher.aclose()


async def test_requests_stay_whole_in_a_pass_for_an_engine_that_shares_prompts() -> None:
    class SharingEngine(FakeEngine):
        shares_prefixes = True

    def conversation(answer: str) -> list[Message]:
        return [parse_message({"role": "user", "content": "q"}, "m"), parse_message(answer_of(answer), "m")]

    def answer_of(text: str) -> dict[str, str]:
        return {"role": "assistant", "content": text}

    scorer = FakeScorer()
    # The wait outlasts the three renders, so one window holds all three requests.
    model = BatchedModel(SharingEngine(scorer), BatcherConfig(max_batch_tokens=60, max_wait_s=0.2))
    assert model.batcher.config.keep_requests_together
    answers = [["aaaaaaaaa", "aa"], ["bbbbbbbbbb", "bbb"], ["c"]]
    await asyncio.gather(*(model.score([conversation(a) for a in group]) for group in answers))
    # Length order alone would give c, aa, bbb, aaaaaaaaa, bbbbbbbbbb; kept whole, a request's rows are neighbours.
    texts = ["".join(chr(i) for i in row) for batch in scorer.batches for row in batch]
    assert texts == ["c", "aa", "aaaaaaaaa", "bbb", "bbbbbbbbbb"]
    assert len(scorer.batches) == 1
    await model.aclose()


async def test_concurrent_requests_are_merged_into_one_batch() -> None:
    scorer = FakeScorer()
    # The budget is exactly the three requests' tokens, so the batch leaves as soon as all three are queued.
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=24, max_wait_s=30.0))
    a, b, c = rows(4, 4), rows(4, 4, start=2), rows(4, 4, start=3)
    results = await asyncio.wait_for(asyncio.gather(batcher.submit(a), batcher.submit(b), batcher.submit(c)), 5)
    assert results == [expected(a), expected(b), expected(c)]
    assert len(scorer.batches) == 1 and len(scorer.batches[0]) == 6
    await batcher.aclose()


async def test_token_budget_and_batch_size_are_respected() -> None:
    scorer = FakeScorer()
    stats: list[BatchStats] = []
    batcher = Batcher(
        scorer, BatcherConfig(max_batch_tokens=32, max_batch_size=3, max_wait_s=0.0), on_batch=stats.append
    )
    requests = [rows(1, 7, 3, start=1), rows(8, 2, start=2), rows(5, 5, 6, 4, start=3), rows(40, start=4)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    assert results == [expected(r) for r in requests]
    for batch in scorer.batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(map(len, batch)) <= 32
    assert sum(s.size for s in stats) == 10 and all(s.padded_tokens >= s.tokens for s in stats)
    await batcher.aclose()


async def test_rows_are_sorted_by_length_within_a_dispatch() -> None:
    scorer = FakeScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=10_000, max_wait_s=0.0))
    items = rows(5, 1, 3, 2, 4)
    assert await batcher.submit(items) == expected(items)  # results come back in the caller's order
    assert [len(r) for r in scorer.batches[0]] == [1, 2, 3, 4, 5]
    await batcher.aclose()


async def test_a_lone_request_waits_at_most_max_wait() -> None:
    scorer = FakeScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=10_000, max_wait_s=0.05))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(batcher.submit(rows(3)), 5)
    assert 0.045 <= loop.time() - started < 2.0
    await batcher.aclose()


async def test_a_full_budget_does_not_wait_for_max_wait() -> None:
    scorer = FakeScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=8, max_wait_s=60.0))
    first = asyncio.ensure_future(batcher.submit(rows(4)))
    await until(lambda: batcher.queue_size == 1)
    assert not scorer.batches  # below the budget: it waits for company
    second = await asyncio.wait_for(batcher.submit(rows(4, start=2)), 5)  # fills the budget: both go now
    assert (await first, second) == (expected(rows(4)), expected(rows(4, start=2)))
    assert len(scorer.batches) == 1
    await batcher.aclose()


async def test_one_request_at_a_time_mode_never_merges() -> None:
    scorer = FakeScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=10_000, max_wait_s=0.0, max_batch_requests=1))
    await asyncio.gather(*(batcher.submit(rows(2, 3, start=s)) for s in range(1, 5)))
    assert [len(b) for b in scorer.batches] == [2, 2, 2, 2]
    await batcher.aclose()


async def test_a_full_queue_rejects_with_429_and_retry_after() -> None:
    scorer = FakeScorer(gated=True)
    batcher = Batcher(scorer, BatcherConfig(max_queue_requests=2, max_wait_s=0.0, retry_after_s=3))
    running = asyncio.ensure_future(batcher.submit(rows(2)))
    await asyncio.wait_for(scorer.entered.wait(), 5)
    queued = asyncio.ensure_future(batcher.submit(rows(2, start=2)))
    await until(lambda: batcher.queue_size == 2)
    with pytest.raises(OverloadedError) as caught:
        await batcher.submit(rows(2, start=3))
    status, body, headers = error_reply(caught.value)
    assert status == 429 and headers == {"Retry-After": "3"} and body["error"]["type"] == "overloaded"
    scorer.gate.set()
    assert await running == expected(rows(2)) and await queued == expected(rows(2, start=2))
    assert batcher.queue_size == 0
    await batcher.aclose()


async def test_a_cancelled_request_is_dropped_from_the_queue() -> None:
    scorer = FakeScorer(gated=True)
    batcher = Batcher(scorer, BatcherConfig(max_wait_s=0.0))
    running = asyncio.ensure_future(batcher.submit(rows(2)))
    await asyncio.wait_for(scorer.entered.wait(), 5)  # the worker is busy: the next two stay queued
    doomed_rows, kept_rows = rows(3, 3, start=7), rows(3, start=9)
    doomed = asyncio.ensure_future(batcher.submit(doomed_rows))
    kept = asyncio.ensure_future(batcher.submit(kept_rows))
    await until(lambda: batcher.queue_size == 3)
    doomed.cancel()
    await until(lambda: batcher.queue_size == 2)
    scorer.gate.set()
    assert await running == expected(rows(2)) and await kept == expected(kept_rows)
    assert doomed.cancelled()
    assert not set(doomed_rows) & set(scorer.rows())
    await batcher.aclose()


async def test_a_cancelled_request_loses_its_batches_not_yet_started() -> None:
    scorer = FakeScorer(gated=True)
    # A budget of one row per batch: the request's three rows become three forward passes.
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=4, max_wait_s=0.0))
    task = asyncio.ensure_future(batcher.submit(rows(4, 4, 4)))
    await asyncio.wait_for(scorer.entered.wait(), 5)
    task.cancel()
    scorer.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await batcher.aclose()
    assert len(scorer.batches) == 1  # the first pass had started; the other two were dropped


async def test_a_failing_batch_fails_its_requests_only() -> None:
    scorer = FakeScorer(fail_on=-1)
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=4, max_wait_s=0.0))
    bad, good = batcher.submit([(-1, 0, 0, 0)]), batcher.submit(rows(4, start=5))
    results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], InferenceError) and "boom" in str(results[0])
    assert results[1] == expected(rows(4, start=5))
    await batcher.aclose()


async def test_close_finishes_admitted_work_then_refuses() -> None:
    scorer = FakeScorer(gated=True)
    batcher = Batcher(scorer, BatcherConfig(max_wait_s=0.0))
    pending = asyncio.ensure_future(batcher.submit(rows(2)))
    await asyncio.wait_for(scorer.entered.wait(), 5)
    closing = asyncio.ensure_future(batcher.aclose())
    await until(lambda: batcher.closing)
    with pytest.raises(UnavailableError):
        await batcher.submit(rows(2))
    scorer.gate.set()
    await closing
    assert await pending == expected(rows(2))


class CountingScorer(FakeScorer):
    """A gated FakeScorer that counts the passes being scored at once."""

    def __init__(self) -> None:
        super().__init__(gated=True)
        self.running = 0
        self.most = 0

    async def __call__(self, batch: Sequence[tuple[int, ...]]) -> list[float]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            return await super().__call__(batch)
        finally:
            self.running -= 1


async def test_passes_in_flight_run_that_many_passes_at_once_and_no_more() -> None:
    """Two workers: the second pass starts while the first is scored, the third waits for a free one; a request
    split across passes gets every score."""
    scorer = CountingScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=4, max_wait_s=0.0, passes_in_flight=2))
    split = rows(4, 4, 4, 4, start=3)  # four passes of one row
    task = asyncio.ensure_future(batcher.submit(split))
    await until(lambda: scorer.running == 2)
    await asyncio.sleep(0.01)
    assert len(scorer.batches) == 2  # the third pass waits for a worker
    scorer.gate.set()
    assert await task == expected(split)
    assert scorer.most == 2 and len(scorer.batches) == 4
    await batcher.aclose()


async def test_a_free_worker_takes_the_next_window_while_a_pass_is_scored() -> None:
    scorer = CountingScorer()
    batcher = Batcher(scorer, BatcherConfig(max_wait_s=0.0, passes_in_flight=2))
    first = asyncio.ensure_future(batcher.submit(rows(3)))
    await until(lambda: scorer.running == 1)
    second = asyncio.ensure_future(batcher.submit(rows(2, start=5)))
    await until(lambda: scorer.running == 2)  # not merged into the first pass, nor waiting for it
    scorer.gate.set()
    assert await first == expected(rows(3)) and await second == expected(rows(2, start=5))
    await batcher.aclose()


async def test_one_pass_in_flight_keeps_passes_one_after_another() -> None:
    """The default: a request arriving while a pass is scored waits and joins the next window."""
    scorer = CountingScorer()
    batcher = Batcher(scorer, BatcherConfig(max_wait_s=0.0))
    first = asyncio.ensure_future(batcher.submit(rows(3)))
    await until(lambda: scorer.running == 1)
    later = [asyncio.ensure_future(batcher.submit(rows(2, start=k))) for k in (5, 7)]
    await until(lambda: batcher.queue_size == 3)
    await asyncio.sleep(0.01)
    assert len(scorer.batches) == 1
    scorer.gate.set()
    await asyncio.gather(first, *later)
    assert scorer.most == 1 and len(scorer.batches) == 2  # the two later requests merged into one pass
    await batcher.aclose()


async def test_close_waits_for_every_pass_in_flight() -> None:
    scorer = CountingScorer()
    batcher = Batcher(scorer, BatcherConfig(max_batch_tokens=4, max_wait_s=0.0, passes_in_flight=2))
    task = asyncio.ensure_future(batcher.submit(rows(4, 4)))
    await until(lambda: scorer.running == 2)
    closing = asyncio.ensure_future(batcher.aclose())
    await asyncio.sleep(0.01)
    assert not closing.done()
    scorer.gate.set()
    await closing
    assert task.done() and task.result() == expected(rows(4, 4))


def test_passes_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="passes in flight"):
        BatcherConfig(passes_in_flight=0)


async def test_an_engine_with_pass_workers_gets_that_many_passes_in_flight() -> None:
    engine = FakeEngine()
    assert BatchedModel(engine).batcher.config.passes_in_flight == 1
    engine.pass_workers = 3  # type: ignore[attr-defined]
    assert BatchedModel(engine).batcher.config.passes_in_flight == 3
