"""gateway.upstream.streams against the fake upstream over real HTTP: a candidate read as it streams, counted in
tokens, cancelled alone (the fake's handler sees its connection closed), failed and timed out."""

from __future__ import annotations

import math

import pytest

from gateway.upstream.providers import UpstreamTimeout
from tests.gateway.fakes import ANSWERS, DRIP_HOLD, FakeUpstream, make_router, until

pytestmark = pytest.mark.anyio


async def test_a_stream_waits_for_its_checkpoint_and_cancelling_closes_the_upstream(upstream: FakeUpstream) -> None:
    async with make_router(upstream) as router:
        body = {"model": "drip", "messages": [{"role": "user", "content": "hi"}], "seed": 5, "n": 3}
        stream = router.candidate_stream(body, 2, timeout=30)
        stream.start()
        await stream.reach(DRIP_HOLD)
        assert stream.tokens == DRIP_HOLD and not stream.ended
        assert stream.message()["content"] == " ".join(ANSWERS[7 % len(ANSWERS)].split(" ")[:DRIP_HOLD])
        assert upstream.bodies[0]["seed"] == 7 and "n" not in upstream.bodies[0]  # seed + index, one choice
        assert upstream.bodies[0]["stream_options"] == {"include_usage": True}
        await stream.cancel()
        await until(lambda: upstream.cancelled == 1)  # the provider saw the stream closed: it stops generating
        assert stream.ended and stream.cancelled and not stream.finished and stream.error is None
        upstream.release.set()
        assert upstream.dripped[7] == DRIP_HOLD


async def test_a_finished_stream_counts_the_upstreams_usage(upstream: FakeUpstream) -> None:
    upstream.release.set()
    async with make_router(upstream) as router:
        stream = router.candidate_stream({"model": "drip", "messages": [{"role": "user", "content": "hi"}]}, 0, 30)
        stream.start()
        await stream.reach(math.inf)
        assert stream.finished and stream.choice()["message"]["content"] == ANSWERS[0]
        assert stream.tokens == len(ANSWERS[0].split(" ")) and stream.usage is not None
        await stream.cancel()  # a no-op once ended
        assert not stream.cancelled


async def test_a_failing_or_stalled_stream_ends_with_its_error(upstream: FakeUpstream) -> None:
    async with make_router(upstream) as router:
        failing = router.candidate_stream(
            {"model": "always-500", "messages": [{"role": "user", "content": "x"}]}, 0, 30
        )
        failing.start()
        await failing.reach(math.inf)
        assert failing.error is not None and failing.error.status == 500 and not failing.finished

        stalled = router.candidate_stream({"model": "drip", "messages": [{"role": "user", "content": "x"}]}, 0, 0.3)
        stalled.start()
        await stalled.reach(math.inf)  # held after DRIP_HOLD words: the candidate's timeout ends it
        assert isinstance(stalled.error, UpstreamTimeout) and stalled.tokens == DRIP_HOLD
        await until(lambda: upstream.cancelled == 1)
