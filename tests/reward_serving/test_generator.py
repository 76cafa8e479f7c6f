"""LocalGenerator on a tiny random Llama causal LM: n samples from one batched generate, usage, seeds, limits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.reward_serving.errors import InvalidRequestError, ModelLoadError
from gateway.reward_serving.generator import LocalGenerator, SamplingParams, cut_at_stop
from tests.tiny import save_causal_lm

pytestmark = pytest.mark.anyio
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture
async def generator(model_dir: Path) -> AsyncIterator[LocalGenerator]:
    async with LocalGenerator(model_dir, device="cpu") as gen:
        yield gen


def spy_generate(gen: LocalGenerator) -> list[dict[str, Any]]:
    """Record every generate call's keyword arguments (the model is loaded by `start`)."""
    calls: list[dict[str, Any]] = []
    real = gen._model.generate

    def generate(**kwargs: Any) -> Any:
        output = real(**kwargs)
        calls.append({**kwargs, "output": output})
        return output

    gen._model.generate = generate
    return calls


async def test_n_samples_come_from_one_batched_generate_call(generator: LocalGenerator) -> None:
    calls = spy_generate(generator)
    out = await generator.complete(MESSAGES, {"n": 4, "max_tokens": 6, "seed": 1, "temperature": 1.0})
    assert len(calls) == 1 and calls[0]["num_return_sequences"] == 4 and calls[0]["max_new_tokens"] == 6
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    for choice in out["choices"]:
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
    assert len({c["message"]["content"] for c in out["choices"]}) > 1  # sampled, not copies


async def test_usage_counts_the_prompt_once_and_every_generated_token(generator: LocalGenerator) -> None:
    tokenizer = generator._tokenizer
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    out = await generator.complete(MESSAGES, {"n": 3, "max_tokens": 5, "seed": 0})
    usage = out["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    lengths = [5 for c in out["choices"] if c["finish_reason"] == "length"]
    assert sum(lengths) <= usage["completion_tokens"] <= 3 * 5


async def test_a_seed_makes_sampling_reproducible(generator: LocalGenerator) -> None:
    params = {"n": 2, "max_tokens": 8, "seed": 7, "temperature": 0.9, "top_p": 0.95}
    first = await generator.complete(MESSAGES, params)
    again = await generator.complete(MESSAGES, params)
    other = await generator.complete(MESSAGES, {**params, "seed": 8})
    assert first == again
    assert first["choices"] != other["choices"]


async def test_max_tokens_bounds_every_choice(generator: LocalGenerator) -> None:
    calls = spy_generate(generator)
    out = await generator.complete(MESSAGES, {"n": 2, "max_completion_tokens": 2, "max_tokens": 50, "seed": 3})
    assert calls[0]["max_new_tokens"] == 2  # max_completion_tokens wins, as in OpenAI's API
    assert out["usage"]["completion_tokens"] <= 2 * 2
    generated = calls[0]["output"].shape[1] - calls[0]["input_ids"].shape[1]
    assert out["usage"]["completion_tokens"] <= generated * 2 and generated <= 2


async def test_temperature_zero_is_greedy_and_generates_one_row(generator: LocalGenerator) -> None:
    calls = spy_generate(generator)
    out = await generator.complete(MESSAGES, {"n": 3, "max_tokens": 4, "temperature": 0})
    assert calls[0]["do_sample"] is False and calls[0]["num_return_sequences"] == 1
    assert len({c["message"]["content"] for c in out["choices"]}) == 1 and len(out["choices"]) == 3


@pytest.mark.parametrize(
    "params",
    [{"n": 0}, {"temperature": 3}, {"top_p": 0}, {"max_tokens": 0}, {"seed": "x"}, {"stop": [""]}, {"n": True}],
)
def test_bad_sampling_parameters_name_the_field(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams.from_request(params)
    assert info.value.param in params or (info.value.param == "max_tokens" and "max_tokens" in params)


def test_stop_sequences_cut_at_the_earliest() -> None:
    assert cut_at_stop("one. two! three", [" three", "!"]) == ("one. two", True)
    assert cut_at_stop("no stop here", ["###"]) == ("no stop here", False)
    assert SamplingParams.from_request({"stop": "\n"}).stop == ("\n",)


async def test_a_directory_without_a_causal_lm_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        async with LocalGenerator(tmp_path, device="cpu"):
            pass


async def test_cancelling_the_caller_stops_the_generation(generator: LocalGenerator) -> None:
    started = threading.Event()
    calls: list[dict[str, Any]] = []
    real = generator._model.generate

    def generate(**kwargs: Any) -> Any:
        started.set()
        output = real(**kwargs)
        calls.append({**kwargs, "output": output})
        return output

    generator._model.generate = generate
    # Greedy on this tiny model runs all 600 tokens with no EOS (about 9 s on 2 cores): fewer proves the stop.
    params = {"n": 1, "max_tokens": 600, "temperature": 0}
    task = asyncio.ensure_future(generator.complete(MESSAGES, params))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await generator.complete(MESSAGES, {**params, "max_tokens": 1})  # queued behind it: runs once the worker is free
    generated = calls[0]["output"].shape[1] - calls[0]["input_ids"].shape[1]
    assert generated < 600
