"""The output directory's files: which directory a run writes (its version), the checkpoints a killed run
resumes from, and the model card `rewardgate.json` (DESIGN contract 2), written last: its presence marks a
complete model. Checkpoints are `<output>/checkpoints/step-<N>.pt`; only the newest `keep` are kept.

Imports torch, gateway.formats and trainer.config / data / distributed / evaluate; nothing else from the project.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import torch

from gateway.formats import PairSet
from trainer.config import TrainConfig
from trainer.data import TrainingData
from trainer.distributed import Distributed
from trainer.evaluate import Metrics

CARD_FILE = "rewardgate.json"  # the gateway's job runner and the reward server read it (contract 2)


def output_dir(cfg: TrainConfig) -> tuple[Path, str, str]:
    """The directory this run writes, its slug and version: `--output DIR` (slug: --slug or the name;
    version vN from a `vN` name, else v1), or MODELS_DIR/SLUG/vN with N the next free version (the newest
    unfinished one on --resume)."""
    if bool(cfg.output) == bool(cfg.models_dir):
        raise ValueError("give exactly one of --output DIR or --models-dir DIR")
    if cfg.output:
        out = Path(cfg.output)
        match = re.fullmatch(r"v(\d+)", out.name)
        version = out.name if match else "v1"
    else:
        if not cfg.slug or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", cfg.slug):
            raise ValueError("--models-dir needs --slug of lowercase letters, digits, '.', '_' or '-'")
        root = Path(cfg.models_dir) / cfg.slug
        versions = sorted(int(p.name[1:]) for p in root.glob("v*") if re.fullmatch(r"v\d+", p.name))
        unfinished = [v for v in versions if not (root / f"v{v}" / CARD_FILE).exists()]
        number = unfinished[-1] if cfg.resume and unfinished else (versions[-1] + 1 if versions else 1)
        out, version = root / f"v{number}", f"v{number}"
    if (out / CARD_FILE).exists():
        raise FileExistsError(f"{out} already holds a trained model; choose another --output")
    return out, cfg.slug or (out.parent.name if cfg.models_dir else out.name), version


def save_config(output: Path, cfg: TrainConfig) -> None:
    """train_config.json, the config as given, written first (the card records what `auto` resolved to)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir(output: Path) -> Path:
    return output / "checkpoints"


def save_checkpoint(output: Path, step: int, state: dict[str, Any], keep: int = 1) -> Path:
    folder = checkpoint_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    state = {**state, "step": step, "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}
    path = folder / f"step-{step}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact
    for old in sorted(folder.glob("step-*.pt"), key=_step_of)[:-keep]:
        old.unlink()
    return path


def _step_of(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def latest_checkpoint(output: Path) -> Path | None:
    found = sorted(checkpoint_dir(output).glob("step-*.pt"), key=_step_of)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    return state


def remove_checkpoints(output: Path) -> None:
    folder = checkpoint_dir(output)
    for path in folder.glob("step-*.pt"):
        path.unlink()
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()


def training_state(
    dist: Distributed,
    model: Any,
    optimizer: torch.optim.Optimizer,
    master: list[torch.Tensor] | None,
    epoch: int,
    next_batch: int,
) -> dict[str, Any]:
    """A checkpoint's content (save_checkpoint adds the step and the RNG states): whole weights, optimizer
    state, fp32 master copies, and the global batch the loop goes on from. A collective under FSDP: every
    rank calls it, and gathers its shards in this order."""
    return {
        "model": dist.gathered(model.state_dict()),
        "optimizer": dist.gathered(optimizer.state_dict()),
        "master": dist.gathered([m.detach() for m in master]) if master is not None else [],
        "epoch": epoch,
        "next_batch": next_batch,
    }


def restore_training_state(
    state: dict[str, Any],
    dist: Distributed,
    model: Any,
    optimizer: torch.optim.Optimizer,
    master: list[torch.Tensor] | None,
) -> tuple[int, int, int]:
    """Loads a checkpoint into the model, master copies and optimizer, in place; returns (step, epoch,
    next batch). Every rank read the whole tensors; under FSDP each keeps its own slices."""
    model.load_state_dict(dist.sharded_like(state["model"], model.state_dict()))
    if master is not None:
        for m, saved in zip(master, state["master"], strict=True):
            m.data.copy_(dist.sharded_like(saved, m))
    optimizer.load_state_dict(dist.sharded_optimizer_state(state["optimizer"], optimizer))
    return state["step"], state["epoch"], state["next_batch"]


# ---------------------------------------------------------------- the model card


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolved_config(
    cfg: TrainConfig, batch_size: int, precision: str, attention: str, device: torch.device, processes: int
) -> dict[str, Any]:
    """The config as given, plus what its `auto` values became on this machine."""
    return cfg.to_dict() | {
        "resolved_batch_size": batch_size,
        "precision": precision,
        "attention": attention,
        "device": str(device),
        "processes": processes,
    }


def data_summary(path: str, data: TrainingData) -> dict[str, Any]:
    """The card's `data`: which file (by content hash: it reads the file), how many pairs (or rated responses:
    `rows`) went where."""
    unit, dataset = data.unit, data.dataset
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        unit: len(dataset.pairs) if isinstance(dataset, PairSet) else len(dataset.rows),
        f"train_{unit}": len(data.train),
        f"test_{unit}": len(data.test),
        "skipped_lines": len(data.dataset.skipped),
        "truncation": data.truncation.to_dict(),
    }


def training_summary(
    steps: int, seconds: float, stopped_early: bool, pairs: int, tokens: int, unit: str = "pairs"
) -> dict[str, Any]:
    """The card's `training`: optimizer steps, loop time, whether a time budget cut it short, throughput (pairs,
    or rated responses: `rows`, per second)."""
    return {
        "steps": steps,
        "seconds": round(seconds, 2),
        "stopped_early": stopped_early,
        f"{unit}_per_second": round(pairs / seconds, 3) if seconds else 0.0,
        "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
    }


def model_card(
    cfg: TrainConfig,
    slug: str,
    version: str,
    base: str,
    architecture: str,
    *,
    config: dict[str, Any],
    data: dict[str, Any],
    training: dict[str, Any],
    test: Metrics,
    bf16: bool,
    reward_stats: Metrics,
    stats_split: str,
    objective: dict[str, Any] | None = None,
    created_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """rewardgate.json: what was trained, from what, with which objective (the loss the data called for), how,
    and how well (TEST metrics in the precision evaluated; reward mean/std/histogram on `stats_split`, which the
    gateway normalises scores with)."""
    created = created_at or dt.datetime.now(dt.UTC)
    return {
        "format": 1,
        "slug": slug,
        "version": version,
        "base_model": cfg.base_model or base,
        "base_model_path": base,
        "architecture": architecture,
        "created_at": created.isoformat(timespec="seconds"),
        "max_length": cfg.max_length,
        "config": config,
        "objective": objective or {"data": "pairs", "loss": "bradley_terry", "center_rewards": cfg.center_rewards},
        "data": data,
        "training": training,
        "metrics": {"test": test.to_dict(), "precision": "bf16" if bf16 else "fp32"},
        "reward_stats": {
            "mean": reward_stats.reward_mean,
            "std": reward_stats.reward_std,
            "count": reward_stats.scored,
            "split": stats_split,
            "histogram": reward_stats.histogram(),
        },
    }


def write_model_card(output: Path, card: dict[str, Any]) -> Path:
    """Writes rewardgate.json atomically. Call it after every other file of the model: its presence is
    what marks the directory a complete model (the job runner waits for it; output_dir refuses it)."""
    path = output / CARD_FILE
    tmp = path.with_name(CARD_FILE + ".tmp")
    tmp.write_text(json.dumps(card, indent=1))
    os.replace(tmp, path)  # a kill mid-write leaves no card, never half of one
    return path
