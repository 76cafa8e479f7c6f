"""Training checkpoints: everything needed to resume mid-epoch, written atomically.

A checkpoint is `<output>/checkpoints/step-<N>.pt` holding model, optimizer and loop state; only
the newest `keep` are kept. Imports torch only.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch


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
