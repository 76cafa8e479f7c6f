"""The model to train: what `auto` resolves to, freezing, the model built from a base, the trained model saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainer.model
from tests import tiny
from trainer.config import TrainConfig
from trainer.data import TokenizedPair
from trainer.distributed import Distributed
from trainer.model import (
    auto_attention,
    auto_precision,
    build_model,
    freeze,
    load_tokenizer,
    resolve_batch_size,
    trained_model,
)
from trainer.optimizer import trainable_weights

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_precision_and_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_precision(CUDA) == "bf16" and auto_attention(CUDA) == "sdpa"
    assert auto_attention(CPU) == "eager"  # torch's bf16 SDPA backward is slow on CPU
    monkeypatch.setattr(trainer.model.torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert auto_precision(CPU) == "fp32"
    monkeypatch.setattr(trainer.model.torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert auto_precision(CPU) == "bf16"


def test_freeze_fixes_the_embeddings_and_the_bottom_layers() -> None:
    model = tiny.llama_reward_model(tiny.chat_tokenizer())
    freeze(model, embeddings=True, layers=1)
    assert not model.model.embed_tokens.weight.requires_grad
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    assert all(p.requires_grad for p in model.model.layers[1].parameters()) and model.score.weight.requires_grad
    with pytest.raises(ValueError, match="only 2 layers"):
        freeze(tiny.llama_reward_model(tiny.chat_tokenizer()), embeddings=False, layers=2)


def test_build_model_makes_a_one_output_head_in_training_mode_without_dropout(tmp_path: Path) -> None:
    base = str(tiny.save_base(tmp_path / "base", "bert"))
    tokenizer = load_tokenizer(base)
    model = build_model(TrainConfig(freeze_layers=1), base, "eager", tokenizer.pad_token_id)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 1
    assert model.training and model.config.pad_token_id == tokenizer.pad_token_id
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert not any(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    kept = build_model(TrainConfig(dropout=True), base, "eager", tokenizer.pad_token_id)
    assert any(m.p > 0 for m in kept.modules() if isinstance(m, torch.nn.Dropout))


def test_a_base_without_the_asked_attention_kernel_builds_with_eager(tmp_path: Path) -> None:
    base = str(tiny.save_base(tmp_path / "base", "mpnet"))  # MPNet has no SDPA kernel in transformers
    tokenizer = load_tokenizer(base)
    bert = build_model(TrainConfig(), str(tiny.save_base(tmp_path / "bert", "bert")), "sdpa", tokenizer.pad_token_id)
    assert bert.config._attn_implementation == "sdpa"  # a base that has the kernel keeps it
    model = build_model(TrainConfig(), base, "sdpa", tokenizer.pad_token_id)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert model.config._attn_implementation == "eager"


def resolve(cfg: TrainConfig, device: torch.device, dist: Distributed) -> int:
    return resolve_batch_size(cfg, torch.nn.Linear(1, 1), [TokenizedPair((1,), (2,), 0.0)], 0, device, "fp32", dist)


def test_batch_size_counts_pairs_over_all_processes() -> None:
    assert resolve(TrainConfig(batch_size="12"), CPU, Distributed(CPU)) == 12
    assert resolve(TrainConfig(), CPU, Distributed(CPU)) == 8
    assert resolve(TrainConfig(), CUDA, Distributed(CUDA, 0, 2, "fsdp")) == 16  # 8 per GPU, no probe
    with pytest.raises(ValueError, match="each needs a pair"):
        resolve(TrainConfig(batch_size="2"), CPU, Distributed(CPU, 0, 4))


def test_the_trained_model_takes_the_fp32_master_weights_in_eval_mode() -> None:
    model = tiny.llama_reward_model(tiny.chat_tokenizer()).train().to(torch.bfloat16)
    weights = trainable_weights(model, master_copies=True)
    assert weights.master is not None
    for m in weights.master:
        m.add_(1e-4)  # an update bf16 cannot hold
    saved = trained_model(model, weights, lora=False)
    assert saved is model and not saved.training
    assert all(p.dtype == torch.float32 for p in saved.parameters())
    assert all(torch.equal(p, m) for p, m in zip(weights.params, weights.master, strict=True))
