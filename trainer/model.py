"""The model to train: a base -> `*ForSequenceClassification` (num_labels=1) with its tokenizer, the frozen
parts, dropout, LoRA; the precision, attention kernels and batch size the config leaves on `auto`; the
trained model to save (fp32, LoRA merged).

Imports torch, transformers and peft (lazily), gateway.formats (pool_rewards, for the batch-size probe) and
trainer.config / data / distributed / optimizer; nothing else from the project.
"""

from __future__ import annotations

from typing import Any

import torch

from gateway.formats import pool_rewards
from trainer.config import TrainConfig
from trainer.data import TokenizedPair, collate
from trainer.distributed import Distributed
from trainer.optimizer import Weights, copy_master_to_params


def auto_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16"
    # bf16 matmuls on AMX / AVX512-BF16 CPUs run ~6x faster than fp32 (measured: docs/BENCHMARKS.md).
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if device.type == "cpu" and native_bf16 else "fp32"


def auto_attention(device: torch.device) -> str:
    # On CPU, torch's bf16 flash-attention backward took about half of each step (torch profiler), so
    # matmul attention is used there; SDPA keeps its flash kernels on CUDA.
    return "sdpa" if device.type == "cuda" else "eager"


def load_tokenizer(base: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:  # pooling reads the mask, so reusing eos as pad is safe here
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def build_model(cfg: TrainConfig, base: str, attention: str, pad_token_id: int, outputs: int = 1) -> Any:
    """The base with an `outputs`-output head (1; 2 for the length-debiased objective: reward, length), set up as
    the config asks, in training mode, still on the CPU; with eager attention where the base has no `attention`
    kernel (`model.config._attn_implementation` says which it got)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(base)
    config.num_labels = outputs  # also resets a one-output base's label map

    def load(kernel: str) -> Any:
        # A base that already has a one-output head (a reward model trained further) gets a fresh head of `outputs`.
        return AutoModelForSequenceClassification.from_pretrained(
            base, config=config, attn_implementation=kernel, ignore_mismatched_sizes=outputs > 1
        )

    try:
        model = load(attention)
    except ValueError:  # an architecture without that kernel (MPNet, DeBERTa-v2 have no SDPA) trains with eager
        if attention == "eager":
            raise
        model = load("eager")
    model.config.pad_token_id = pad_token_id
    freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    if not cfg.dropout:  # p=0 also lets attention take its fused kernel instead of a dropout-capable one
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora:
        model = with_lora(model, cfg)
    model.train()
    return model


def trained_model(model: Any, weights: Weights, lora: bool) -> Any:
    """The model to evaluate and save, in eval mode: the fp32 master weights rather than their bf16
    rounding (.to keeps the Parameters the master copies are written into), LoRA merged into a plain model,
    and a one-output head (the reward: a length-debiased model's length output is dropped)."""
    if weights.master is not None:
        model.to(torch.float32)
        copy_master_to_params(weights)
    if lora:
        model = model.merge_and_unload()
    if model.config.num_labels > 1:
        keep_first_output(model)
    model.eval()
    return model


def keep_first_output(model: Any) -> None:
    """Cut the classification head to its first output (the reward), so the model is a plain num_labels=1 one."""
    head = model.score if hasattr(model, "score") else model.classifier
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__}: its head is not one linear layer; cannot drop the length output")
    single = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None, dtype=head.weight.dtype)
    with torch.no_grad():
        single.weight.copy_(head.weight[:1])
        if head.bias is not None:
            single.bias.copy_(head.bias[:1])
    single.to(head.weight.device)
    setattr(model, "score" if hasattr(model, "score") else "classifier", single)
    model.config.num_labels = 1
    model.num_labels = 1


def transformer_layers(model: Any) -> Any:
    """The stack of transformer blocks, whatever the architecture calls it (encoder.layer, layers, h)."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: cannot find its {count} transformer layers to freeze")


def freeze(model: Any, embeddings: bool, layers: int) -> None:
    if embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if layers:
        stack = transformer_layers(model)
        if layers >= len(stack):
            raise ValueError(f"freeze_layers={layers}: the model has only {len(stack)} layers")
        for block in stack[:layers]:
            block.requires_grad_(False)


def with_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout
    )
    return get_peft_model(model, config)


def resolve_batch_size(
    cfg: TrainConfig,
    model: Any,
    examples: list[TokenizedPair],
    pad_id: int,
    device: torch.device,
    precision: str,
    dist: Distributed,
) -> int:
    """Pairs per micro-batch over all processes. `auto`: 8 on CPU; on CUDA the largest power of two
    <= 64 whose longest batch fits one GPU, times the number of GPUs (the smallest fit of any rank);
    under FSDP 8 per GPU, as a probe there would need every rank's forward passes."""
    if cfg.batch_size != "auto":
        size = int(cfg.batch_size)
        if size < dist.world_size:
            raise ValueError(f"batch_size {size} < {dist.world_size} processes: each needs a pair per micro-batch")
        return size
    if device.type != "cuda":
        return 8
    if dist.fsdp:
        return 8 * dist.world_size
    return dist.world_size * dist.min_over_ranks(probe_batch_size(model, examples, pad_id, device, precision))


def probe_batch_size(
    model: Any, examples: list[TokenizedPair], pad_id: int, device: torch.device, precision: str
) -> int:
    longest = max(examples, key=lambda p: p.longest)
    size = 64
    while size > 1:
        try:
            batch = collate([longest] * size, pad_id)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast"):
                out = pool_rewards(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)
            return size
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            size //= 2
    return 1
