"""The vLLM engine scores as the torch engine does (marker `vllm`: runs only where vLLM and CUDA are)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.formats import parse_message
from tests.tiny import chat_tokenizer, llama_config

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("the vLLM engine test needs a CUDA device", allow_module_level=True)

CONVERSATIONS = [
    [{"role": "user", "content": "How do I reset my password?"}, {"role": "assistant", "content": a}]
    for a in ("Open settings, choose security, then reset.", "I cannot help with that.", "Thanks!")
]


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


def test_vllm_scores_match_the_torch_engine(tmp_path: Path) -> None:
    from gateway.reward_serving.engine import TorchRewardEngine
    from gateway.reward_serving.vllm_engine import VllmRewardEngine

    directory = save_llama(tmp_path / "rm" / "v1")
    expected = TorchRewardEngine.load(directory, device="cuda").score(CONVERSATIONS)
    engine = VllmRewardEngine.load(directory, gpu_memory_utilization=0.3)
    ids = engine.render([[parse_message(m, "m") for m in c] for c in CONVERSATIONS])
    assert engine.score_batch(ids) == pytest.approx(expected, abs=5e-2, rel=5e-2)  # both bf16
    engine.close()
