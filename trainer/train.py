"""train(cfg): preference pairs -> a Bradley-Terry reward model directory (DESIGN contract 2); rated responses
(scalar rewards) -> the same directory, trained pointwise with the loss their data calls for (objective.py).

One function read top to bottom: setup, data, model, optimizer, loop, evaluation, save. What it calls lives in
data, model, optimizer, objective, checkpoint (+ the model card) and distributed (the rules for several
processes under `torchrun` / `accelerate launch`). Imports gateway.formats only from the rest of the project.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import torch

from gateway.formats import load_data, pool_logits
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
from trainer.data import collate, length_grouped_batches, training_data
from trainer.distributed import session, shard
from trainer.evaluate import Metrics, evaluate_records
from trainer.model import (
    auto_attention,
    auto_precision,
    build_model,
    load_tokenizer,
    resolve_batch_size,
    trained_model,
)
from trainer.objective import Schedule
from trainer.optimizer import adamw, optimizer_step, trainable_weights
from trainer.plot import write_plot


@dataclass(frozen=True)
class TrainResult:
    output: Path
    test: Metrics
    steps: int
    train_seconds: float
    pairs_per_second: float
    tokens_per_second: float
    rank: int = 0  # this process's rank under a launcher; rank 0 wrote the directory


def train(cfg: TrainConfig) -> TrainResult:
    """One process, or one rank of `torchrun` / `accelerate launch`: the same loop either way."""
    with session(cfg.device, cfg.distributed_strategy) as dist:
        # ------------------------------------------------------------ setup
        output, slug, version = output_dir(cfg)
        dist.barrier()  # every rank has picked the version before rank 0 creates its directory
        device = dist.device
        precision = cfg.precision if cfg.precision != "auto" else auto_precision(device)
        # bf16: bf16 weights, fp32 master copies. FSDP keeps fp32 shards and computes in bf16 (no second copy).
        bf16_weights = precision == "bf16" and not dist.fsdp
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if dist.is_main:
            save_config(output, cfg)
        dist.print(f"config: {json.dumps(cfg.to_dict())}")

        # ------------------------------------------------------------ data
        dataset = load_data(cfg.data, skip_invalid=cfg.skip_invalid)  # preference pairs or rated responses
        with dist.main_first():  # resolving an alias may convert and cache the base model: once, on rank 0
            base = resolve_base(cfg.base_model)
        tokenizer = load_tokenizer(base)
        data = training_data(cfg, dataset, tokenizer)  # TRAIN tokenized (at most max_pairs of it), TEST as records
        objective = data.objective  # Bradley-Terry for pairs; for rated responses the loss their rewards call for
        dist.print(f"data: {data.summary()}")
        dist.print(f"objective: {objective.describe()}")

        # ------------------------------------------------------------ model
        attention = cfg.attention if cfg.attention != "auto" else auto_attention(device)
        model = build_model(cfg, base, attention, tokenizer.pad_token_id, objective.outputs)
        attention = model.config._attn_implementation  # what the base supports of what was asked
        if not dist.fsdp:  # FSDP moves each block to the GPU as it shards it: the whole model need not fit one GPU
            model.to(device=device, dtype=torch.bfloat16 if bf16_weights else None)
        batch_size = resolve_batch_size(cfg, model, data.examples, tokenizer.pad_token_id, device, precision, dist)
        # `runner`: the model or its DDP/FSDP wrapper, made before the optimizer, which must see FSDP's shards.
        runner = dist.wrap(model, bf16=precision == "bf16")

        # ------------------------------------------------------------ optimizer (and the state to resume)
        weights = trainable_weights(model, master_copies=bf16_weights)  # AdamW steps fp32 copies of bf16 weights
        optimizer = adamw(weights, cfg.learning_rate, cfg.weight_decay)
        steps = cfg.epochs * math.ceil(math.ceil(len(data.examples) / batch_size) / cfg.grad_accum)  # optimizer steps
        schedule = Schedule.planned(cfg.learning_rate, cfg.schedule, steps, cfg.warmup_ratio, cfg.time_budget_s)
        step, start_epoch, start_batch = 0, 0, 0
        if cfg.resume and (ckpt := latest_checkpoint(output)) is not None:
            state = load_checkpoint(ckpt)  # every rank reads it, and restores the RNG states
            step, start_epoch, start_batch = restore_training_state(state, dist, model, optimizer, weights.master)
            dist.print(f"resumed from {ckpt.name}: epoch {start_epoch}, batch {start_batch}, step {step}")

        # ------------------------------------------------------------ training loop
        first_step, lengths, pad = step, [p.longest for p in data.examples], tokenizer.pad_token_id
        metrics_log: TextIO = (output / "metrics.jsonl").open("a") if dist.is_main else io.StringIO()
        progress = progress_bar(cfg, schedule.total_steps, step, dist.is_main)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
        bf16 = precision != "fp32"  # evaluation runs in the training precision (fast); the server's fp32 differs
        evaluate = partial(
            evaluate_records, objective=objective, tokenizer=tokenizer, max_length=cfg.max_length, device=device,
            bf16=bf16, threshold=cfg.pass_threshold,
        )  # fmt: skip
        t0, pairs_done, tokens_done, window, stop = time.perf_counter(), 0, 0, [], False
        for epoch in range(start_epoch, cfg.epochs):
            # Every rank builds this same global order from the seed, then takes its own slice of each batch.
            order = length_grouped_batches(lengths, batch_size, seed=cfg.seed + epoch)
            for i in range(start_batch if epoch == start_epoch else 0, len(order)):
                part = shard(order[i], dist.rank, dist.world_size)  # one process: the whole batch, weight 1
                batch = {k: v.to(device) for k, v in collate([data.examples[j] for j in part.pairs], pad).items()}
                at_epoch_end = i + 1 == len(order)
                at_step = (i + 1) % cfg.grad_accum == 0 or at_epoch_end  # an epoch's last micro-batches step too
                with dist.gradient_sync(runner, at_step):  # all-reduce gradients on a step's last micro-batch only
                    with autocast:  # one forward for the batch (pairs: rows [0, n) chosen, [n, 2n) rejected)
                        outputs = pool_logits(runner, batch["input_ids"], batch["attention_mask"])
                    loss, stats = objective.loss(outputs, batch)
                    (loss * part.weight / cfg.grad_accum).backward()
                window.append(dist.reduce_stats(stats, part.counted))
                pairs_done += len(order[i])
                tokens_done += sum(data.examples[j].tokens for j in order[i])
                if not at_step:
                    continue
                lr = schedule.lr(step)
                optimizer_step(optimizer, weights, lr)
                step += 1
                progress.update(1)
                if cfg.time_budget_s:  # fit the schedule to the steps the budget allows, so the decay completes
                    elapsed = dist.agree(time.perf_counter() - t0)  # rank 0's clock: all ranks stop at the same step
                    schedule = schedule.fitted(step, step - first_step, elapsed)
                if step % cfg.log_every == 0 or at_epoch_end:
                    row = train_row(window, step, epoch, lr, time.perf_counter() - t0)
                    write_row(metrics_log, row)
                    shown = {"loss": f"{row['loss']:.3f}"} | (
                        {"acc": f"{row['accuracy']:.2f}"} if "accuracy" in row else {}
                    )
                    progress.set_postfix(shown)
                    window = []
                last_step = at_epoch_end and epoch + 1 == cfg.epochs  # the final save follows: no checkpoint needed
                if (step % cfg.save_steps == 0 or at_epoch_end) and not last_step:
                    resume_at = (epoch + 1, 0) if at_epoch_end else (epoch, i + 1)
                    state = training_state(dist, model, optimizer, weights.master, *resume_at)  # FSDP: every rank
                    if dist.is_main:
                        save_checkpoint(output, step, state)
                if cfg.time_budget_s and schedule.stops_early(step, dist.agree(time.perf_counter() - t0)):
                    dist.print(f"time budget of {cfg.time_budget_s}s reached at step {step}; stopping early")
                    stop = True
                    break
            if cfg.eval_every_epoch and not stop:
                write_row(metrics_log, eval_row(step, evaluate(dist.scorer(model, runner), data.test)))
            if stop:
                break
        progress.close()
        train_seconds = time.perf_counter() - t0

        # ------------------------------------------------------------ evaluation
        model = trained_model(model, weights, cfg.lora)  # fp32 master weights; LoRA merged
        scorer = dist.scorer(model, runner)  # every rank evaluates (it would idle otherwise); rank 0 writes
        test = evaluate(scorer, data.test)
        # The card's reward stats, which the gateway normalises scores with: TEST's, else 512 TRAIN records'.
        stats_split = "TEST" if data.test else "TRAIN"
        reward_stats = test if data.test else evaluate(scorer, data.train[:512])
        write_row(metrics_log, eval_row(step, test))
        metrics_log.close()
        weights_to_save = dist.gathered(model.state_dict())  # FSDP: the whole weights, gathered by every rank
        seconds = max(train_seconds, 1e-9)
        result = TrainResult(output, test, step, train_seconds, pairs_done / seconds, tokens_done / seconds, dist.rank)
        if not dist.is_main:
            return result

        # ------------------------------------------------------------ save (rank 0)
        model.save_pretrained(output, state_dict=weights_to_save)
        tokenizer.save_pretrained(output)
        write_plot(output / "metrics.jsonl", output / "training_curves.png")
        card = model_card(
            cfg, slug, version, base, type(model).__name__,
            config=resolved_config(cfg, batch_size, precision, attention, device, dist.world_size),
            data=data_summary(cfg.data, data),
            training=training_summary(step, train_seconds, stop, pairs_done, tokens_done, data.unit),
            test=test, bf16=bf16, reward_stats=reward_stats, stats_split=stats_split, objective=objective.to_dict(),
        )  # fmt: skip
        write_model_card(output, card)  # last: its presence marks a complete model
        remove_checkpoints(output)
        return result


# ---------------------------------------------------------------- the loop's small parts


def progress_bar(cfg: TrainConfig, total: int, done: int, main: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, disable=not (cfg.progress and main), desc="train", unit="step")


def train_row(window: list[dict[str, float]], step: int, epoch: int, lr: float, elapsed_s: float) -> dict[str, Any]:
    """A metrics.jsonl `train` row: each batch metric's mean over the micro-batches since the last row."""
    means = {k: round(sum(s[k] for s in window) / len(window), 5) for k in window[0]}
    return means | {"kind": "train", "step": step, "epoch": epoch, "lr": lr, "elapsed_s": round(elapsed_s, 2)}


def eval_row(step: int, metrics: Metrics) -> dict[str, Any]:
    return {"kind": "eval", "step": step, **metrics.to_dict()}


def write_row(log: TextIO, row: dict[str, Any]) -> None:
    log.write(json.dumps(row) + "\n")
    log.flush()  # the gateway's job runner follows the file while training runs
