"""gateway/upstream/local.py, the in-process `local` provider: LiteLLM's custom-provider mechanism, driven through
the real Router and LiteLLMProvider, first with a recording fake generator (no torch), then with LocalGenerator on a
tiny causal LM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from gateway.upstream.local import local_provider_config, register_local_models
from gateway.upstream.providers import LiteLLMProvider, UpstreamError
from gateway.upstream.router import Candidate, Router
from tests.tiny import save_causal_lm

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"),  # LiteLLM's types
]
MESSAGES = [{"role": "user", "content": "Where is order QB-1?"}]


class BadParameter(ValueError):
    status = 400


class FakeGenerator:
    """Answers `answer <i>` for each of n; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    async def complete(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(([dict(m) for m in messages], dict(params)))
        if params.get("temperature") == 5:
            raise BadParameter("temperature must be a number in [0, 2], got 5")
        n = int(params.get("n") or 1)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}
            for i in range(n)
        ]
        usage = {"prompt_tokens": 7, "completion_tokens": 2 * n, "total_tokens": 7 + 2 * n}
        return {"choices": choices, "usage": usage}


@pytest.fixture
def fake() -> Iterator[FakeGenerator]:
    generator = FakeGenerator()
    undo = register_local_models({"fake": generator.complete})
    yield generator
    undo()


def local_router() -> Router:
    return Router.from_configs([local_provider_config()], default_provider=None)


async def test_local_model_names_resolve_to_litellm_local_with_native_n() -> None:
    provider, upstream = local_router().resolve("local:smollm2")
    assert isinstance(provider, LiteLLMProvider) and provider.native_n and upstream == "smollm2"
    assert "litellm_provider='local'" in repr(provider)


async def test_best_of_n_is_one_native_call_through_litellm(fake: FakeGenerator) -> None:
    body = {"model": "local:fake", "messages": MESSAGES, "temperature": 0.7, "top_p": 0.9, "max_tokens": 20, "seed": 3}
    async with local_router() as router:
        candidates = await router.generate_candidates(body, 4, timeout=30)
    assert len(fake.calls) == 1
    messages, params = fake.calls[0]
    assert messages == MESSAGES
    assert {k: params[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")} == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 20,
        "seed": 3,
    }
    assert all(isinstance(c, Candidate) for c in candidates)
    assert [c.choice["message"]["content"] for c in candidates if isinstance(c, Candidate)] == [
        f"answer {i}" for i in range(4)
    ]
    first = candidates[0]
    assert isinstance(first, Candidate) and first.usage is not None and first.usage["completion_tokens"] == 8


async def test_plain_completion_and_stream(fake: FakeGenerator) -> None:
    async with local_router() as router:
        response = await router.complete({"model": "local/fake", "messages": MESSAGES}, timeout=30)
        assert response["choices"][0]["message"]["content"] == "answer 0"
        assert response["object"] == "chat.completion" and response["usage"]["total_tokens"] == 9
        async with aclosing(router.stream({"model": "local:fake", "messages": MESSAGES}, timeout=30)) as stream:
            raw = b"".join([chunk async for chunk in stream])
    assert b"answer 0" in raw and raw.endswith(b"data: [DONE]\n\n")


async def test_closing_a_candidate_stream_stops_the_local_generator() -> None:
    """Early rejection closes a candidate's stream: the in-process generator behind LiteLLM sees the cancellation
    (LocalGenerator's own stops its `generate` at the next token then)."""
    started, stopped = asyncio.Event(), asyncio.Event()

    async def endless(messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()  # generating until told to stop
        finally:
            stopped.set()
        raise AssertionError("never reached")

    undo = register_local_models({"endless": endless})
    try:
        async with local_router() as router:
            stream = router.candidate_stream({"model": "local:endless", "messages": MESSAGES}, 0, timeout=30)
            stream.start()
            await asyncio.wait_for(started.wait(), 30)
            assert not stopped.is_set()
            await stream.cancel()
            await asyncio.wait_for(stopped.wait(), 30)
            assert stream.cancelled and stream.tokens == 0
    finally:
        undo()


async def test_unknown_local_model_is_404_and_bad_parameters_400(fake: FakeGenerator) -> None:
    async with local_router() as router:
        with pytest.raises(UpstreamError) as missing:
            await router.complete({"model": "local:nope", "messages": MESSAGES}, timeout=30)
        with pytest.raises(UpstreamError) as bad:
            await router.complete({"model": "local:fake", "messages": MESSAGES, "temperature": 5}, timeout=30)
    assert missing.value.status == 404 and "'nope'" in str(missing.value) and "['fake']" in str(missing.value)
    assert bad.value.status == 400 and "temperature" in str(bad.value)


async def test_unregistering_removes_only_this_handler() -> None:
    import litellm

    first, second = FakeGenerator(), FakeGenerator()
    undo_first = register_local_models({"a": first.complete})
    undo_second = register_local_models({"b": second.complete})  # replaces the first
    assert sum(1 for item in litellm.custom_provider_map if item["provider"] == "local") == 1
    undo_first()  # already replaced: a no-op
    assert sum(1 for item in litellm.custom_provider_map if item["provider"] == "local") == 1
    undo_second()
    assert all(item["provider"] != "local" for item in litellm.custom_provider_map)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture
async def tiny_generator(tiny_lm: Path) -> AsyncIterator[None]:
    from gateway.reward_serving.generator import LocalGenerator

    async with LocalGenerator(tiny_lm, device="cpu") as generator:
        undo = register_local_models({"tiny": generator.complete})
        yield
        undo()


async def test_local_generator_through_router_gives_n_sampled_choices(tiny_generator: None) -> None:
    body = {"model": "local:tiny", "messages": MESSAGES, "max_tokens": 6, "seed": 1, "temperature": 1.0}
    async with local_router() as router:
        candidates = await router.generate_candidates(body, 3, timeout=60)
        again = await router.generate_candidates(body, 3, timeout=60)
    assert [c.index for c in candidates] == [0, 1, 2] and all(isinstance(c, Candidate) for c in candidates)
    texts = [c.choice["message"]["content"] for c in candidates if isinstance(c, Candidate)]
    assert texts == [c.choice["message"]["content"] for c in again if isinstance(c, Candidate)]  # same seed
    usage = candidates[0].usage if isinstance(candidates[0], Candidate) else None
    assert usage is not None and 0 < usage["completion_tokens"] <= 3 * 6
