"""train(cfg): preference pairs -> a Bradley-Terry reward model directory (DESIGN contract 2).

Read top to bottom: setup, data, model, optimizer, loop (checkpointed, resumable), evaluation, save.
The same loop runs as one process or as each rank of `torchrun` / `accelerate launch`; the rules
for several processes (global batch, who writes what) live in trainer/distributed.py.
Imports gateway.formats only from the rest of the project. The model card (rewardgate.json) is built and
written by trainer/checkpoint.py.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gateway.formats import load_pairs, pool_rewards
from trainer.bases import resolve_base
from trainer.checkpoint import (
    data_summary,
    latest_checkpoint,
    load_checkpoint,
    model_card,
    output_dir,
    remove_checkpoints,
    resolved_config,
    restore_training_state,
    save_checkpoint,
    save_config,
    training_state,
    training_summary,
    write_model_card,
)
from trainer.config import TrainConfig
from trainer.data import TokenizedPair, collate, length_grouped_batches, tokenize_pairs
from trainer.distributed import Distributed, session, shard
from trainer.evaluate import PairMetrics, evaluate_pairs
from trainer.objective import bradley_terry_loss, lr_multiplier
from trainer.plot import write_plot

MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class TrainResult:
    output: Path
    test: PairMetrics
    steps: int
    train_seconds: float
    pairs_per_second: float
    tokens_per_second: float
    rank: int = 0  # this process's rank under a launcher; rank 0 wrote the directory


def train(cfg: TrainConfig) -> TrainResult:
    """One process, or one rank of `torchrun` / `accelerate launch`: the same loop either way."""
    with session(cfg.device, cfg.distributed_strategy) as dist:
        return _train(cfg, dist)


def _train(cfg: TrainConfig, dist: Distributed) -> TrainResult:
    # ---------------------------------------------------------------- setup
    output, slug, version = output_dir(cfg)
    dist.barrier()  # every rank has picked the version before rank 0 creates its directory
    device = dist.device
    precision = cfg.precision if cfg.precision != "auto" else _auto_precision(device)
    # bf16: bf16 weights with fp32 master copies. FSDP keeps fp32 shards instead and computes in bf16
    # through its mixed-precision policy: the same arithmetic, without a second copy of the weights.
    bf16_weights = precision == "bf16" and not dist.fsdp
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if dist.is_main:
        save_config(output, cfg)
    dist.print(f"config: {json.dumps(cfg.to_dict())}")

    # ---------------------------------------------------------------- data
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dataset = load_pairs(cfg.data, skip_invalid=cfg.skip_invalid)
    with dist.main_first():  # resolving an alias may convert and cache the base model: once, on rank 0
        base = resolve_base(cfg.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:  # pooling reads the mask, so reusing eos as pad is safe here
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    train_pairs, test_pairs = dataset.split("TRAIN"), dataset.split("TEST")
    if cfg.max_pairs:
        train_pairs = random.Random(cfg.seed).sample(train_pairs, min(cfg.max_pairs, len(train_pairs)))
    examples, truncation = tokenize_pairs(train_pairs, tokenizer, cfg.max_length)
    if not examples:
        raise ValueError(f"{cfg.data}: no TRAIN pairs fit max_length={cfg.max_length}")
    dist.print(f"data: {dataset.summary()}; training on {len(examples)} pairs; truncation {truncation.to_dict()}")

    # ---------------------------------------------------------------- model
    # On CPU, torch's bf16 flash-attention backward took about half of each step (torch profiler), so
    # matmul attention is used there; SDPA keeps its flash kernels on CUDA.
    attention = cfg.attention if cfg.attention != "auto" else ("sdpa" if device.type == "cuda" else "eager")
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, attn_implementation=attention)
    model.config.pad_token_id = tokenizer.pad_token_id
    _freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    if not cfg.dropout:  # p=0 also lets attention take its fused kernel instead of a dropout-capable one
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora:
        model = _with_lora(model, cfg)
    if not dist.fsdp:  # FSDP moves each block to the GPU as it shards it: the whole model need not fit one GPU
        model.to(device)
    if bf16_weights:
        model.to(torch.bfloat16)
    model.train()
    batch_size = _batch_size(cfg, model, examples, tokenizer.pad_token_id, device, precision, dist)
    # The forward runs through `runner`: the model itself, or its DDP/FSDP wrapper (before the optimizer,
    # which must see FSDP's sharded parameters).
    runner = dist.wrap(model, bf16=precision == "bf16")

    # ---------------------------------------------------------------- optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    # Pure bf16 weights lose small updates to rounding, so the optimizer steps fp32 master copies.
    master = [p.detach().float().clone() for p in params] if bf16_weights else params
    # Fused AdamW: one kernel over all parameters (measured 4x faster than foreach on this CPU).
    optimizer = torch.optim.AdamW(master, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    batches_per_epoch = math.ceil(len(examples) / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = planned_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)

    # ---------------------------------------------------------------- resume
    step, start_epoch, start_batch = 0, 0, 0
    if cfg.resume and (ckpt := latest_checkpoint(output)) is not None:
        state = load_checkpoint(ckpt)  # every rank reads it (whole tensors); FSDP keeps its own slices
        master_copies = master if bf16_weights else None
        step, start_epoch, start_batch = restore_training_state(state, dist, model, optimizer, master_copies)
        dist.print(f"resumed from {ckpt.name}: epoch {start_epoch}, batch {start_batch}, step {step}")

    # ---------------------------------------------------------------- loop
    first_step = step
    metrics_log = (output / "metrics.jsonl").open("a") if dist.is_main else io.StringIO()
    lengths = [p.longest for p in examples]
    progress = _progress(cfg, total_steps, step, dist.is_main)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
    bf16 = (
        precision != "fp32"
    )  # evaluation runs in the training precision (fast); the server's fp32 differs by rounding
    t0, pairs_done, tokens_done, window = time.perf_counter(), 0, 0, []
    stop = False
    for epoch in range(start_epoch, cfg.epochs):
        # Every rank builds this same global order from the seed, then takes its own slice of each batch.
        order = length_grouped_batches(lengths, batch_size, seed=cfg.seed + epoch)
        first = start_batch if epoch == start_epoch else 0
        for i in range(first, len(order)):
            part = shard(order[i], dist.rank, dist.world_size)  # one process: the whole batch, weight 1
            batch = collate([examples[j] for j in part.pairs], tokenizer.pad_token_id)
            at_step = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(order)
            with dist.gradient_sync(runner, at_step):  # all-reduce gradients on a step's last micro-batch only
                with autocast:
                    rewards = pool_rewards(runner, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                n = len(part.pairs)
                loss, stats = bradley_terry_loss(
                    rewards[:n], rewards[n:], batch["margin"].to(device), cfg.center_rewards
                )
                (loss * part.weight / cfg.grad_accum).backward()
            window.append(dist.reduce_stats(stats, part.counted))
            pairs_done += len(order[i])
            tokens_done += sum(examples[j].tokens for j in order[i])
            if not at_step:
                continue
            # -- optimizer step
            lr = cfg.learning_rate * lr_multiplier(step, total_steps, warmup, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if bf16_weights:
                for m, p in zip(master, params, strict=True):
                    m.grad = None if p.grad is None else p.grad.float()
                    p.grad = None
            torch.nn.utils.clip_grad_norm_(master, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if bf16_weights:
                with torch.no_grad():
                    for m, p in zip(master, params, strict=True):
                        p.copy_(m)
            step += 1
            progress.update(1)
            if cfg.time_budget_s:  # fit the schedule to the steps the budget allows, so the decay completes
                elapsed = dist.agree(time.perf_counter() - t0)  # rank 0's clock: all ranks stop at the same step
                left = (cfg.time_budget_s - elapsed) / (elapsed / (step - first_step))
                total_steps = min(planned_steps, step + max(0, int(left)))
                warmup = min(warmup, int(cfg.warmup_ratio * total_steps))  # a short budget still gets its decay
            if step % cfg.log_every == 0 or i + 1 == len(order):
                row = _mean_stats(window) | {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    "elapsed_s": round(time.perf_counter() - t0, 2),
                }
                metrics_log.write(json.dumps(row) + "\n")
                metrics_log.flush()
                progress.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
                window = []
            at_epoch_end = i + 1 == len(order)
            last_step = at_epoch_end and epoch + 1 == cfg.epochs  # the final save follows: no checkpoint needed
            if (step % cfg.save_steps == 0 or at_epoch_end) and not last_step:
                next_epoch, next_batch = (epoch + 1, 0) if at_epoch_end else (epoch, i + 1)
                # FSDP gathers its shards here, on every rank
                state = training_state(dist, model, optimizer, master if bf16_weights else None, next_epoch, next_batch)
                if dist.is_main:
                    save_checkpoint(output, step, state)
            out_of_time = bool(cfg.time_budget_s) and (
                dist.agree(time.perf_counter() - t0) > cfg.time_budget_s or step >= total_steps
            )
            if out_of_time and step < planned_steps:
                dist.print(f"time budget of {cfg.time_budget_s}s reached at step {step}; stopping early")
                stop = True
                break
        if cfg.eval_every_epoch and not stop:
            scorer = dist.scorer(model, runner)
            _log_eval(metrics_log, step, evaluate_pairs(scorer, tokenizer, test_pairs, cfg.max_length, device, bf16))
        if stop:
            break
    progress.close()
    train_seconds = time.perf_counter() - t0

    # ---------------------------------------------------------------- evaluation and save
    if bf16_weights:  # keep the fp32 master weights, not their bf16 rounding (.to keeps the Parameters)
        model.to(torch.float32)
        with torch.no_grad():
            for m, p in zip(master, params, strict=True):
                p.copy_(m)
    if cfg.lora:
        model = model.merge_and_unload()
    model.eval()
    scorer = dist.scorer(model, runner)  # every rank evaluates (it would idle otherwise); rank 0 writes
    test = evaluate_pairs(scorer, tokenizer, test_pairs, cfg.max_length, device, bf16)
    stats_pairs, stats_split = (test_pairs, "TEST") if test_pairs else (train_pairs[:512], "TRAIN")
    reward_stats = test if test_pairs else evaluate_pairs(scorer, tokenizer, stats_pairs, cfg.max_length, device, bf16)
    _log_eval(metrics_log, step, test)
    metrics_log.close()
    weights = dist.gathered(model.state_dict())  # FSDP: the whole weights, gathered by every rank
    result = TrainResult(
        output,
        test,
        step,
        train_seconds,
        pairs_done / max(train_seconds, 1e-9),
        tokens_done / max(train_seconds, 1e-9),
        dist.rank,
    )
    if not dist.is_main:
        return result
    model.save_pretrained(output, state_dict=weights)
    tokenizer.save_pretrained(output)
    write_plot(output / "metrics.jsonl", output / "training_curves.png")
    card = model_card(
        cfg, slug, version, base, type(model).__name__,
        config=resolved_config(cfg, batch_size, precision, attention, device, dist.world_size),
        data=data_summary(cfg.data, dataset, len(train_pairs), len(test_pairs), truncation),
        training=training_summary(step, train_seconds, stop, pairs_done, tokens_done),
        test=test, bf16=bf16, reward_stats=reward_stats, stats_split=stats_split,
    )  # fmt: skip
    write_model_card(output, card)  # last: its presence marks a complete model
    remove_checkpoints(output)
    return result


# ---------------------------------------------------------------- helpers


def _auto_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16"
    # bf16 matmuls on AMX / AVX512-BF16 CPUs run ~6x faster than fp32 (measured: docs/BENCHMARKS.md).
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if device.type == "cpu" and native_bf16 else "fp32"


def _transformer_layers(model: Any) -> Any:
    """The stack of transformer blocks, whatever the architecture calls it (encoder.layer, layers, h)."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: cannot find its {count} transformer layers to freeze")


def _freeze(model: Any, embeddings: bool, layers: int) -> None:
    if embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if layers:
        stack = _transformer_layers(model)
        if layers >= len(stack):
            raise ValueError(f"freeze_layers={layers}: the model has only {len(stack)} layers")
        for block in stack[:layers]:
            block.requires_grad_(False)


def _with_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout
    )
    return get_peft_model(model, config)


def _batch_size(
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
    return dist.world_size * dist.min_over_ranks(_probe_batch_size(model, examples, pad_id, device, precision))


def _probe_batch_size(
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


def _progress(cfg: TrainConfig, total: int, done: int, main: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, disable=not (cfg.progress and main), desc="train", unit="step")


def _mean_stats(window: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(s[k] for s in window) / len(window), 5) for k in window[0]}


def _log_eval(log: Any, step: int, metrics: PairMetrics) -> None:
    log.write(json.dumps({"kind": "eval", "step": step, **metrics.to_dict()}) + "\n")
    log.flush()
