"""The optimizer and its step: AdamW over the trainable weights, or over fp32 master copies of them when
the model's weights are bf16 (pure bf16 weights lose small updates to rounding); gradient clipping.

Imports torch only; nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Weights:
    """What the optimizer trains: the model's trainable parameters and, for bf16 weights, their fp32
    master copies. The optimizer steps `stepped`; the model's parameters follow the master copies."""

    params: list[torch.nn.Parameter]
    master: list[torch.Tensor] | None = None

    @property
    def stepped(self) -> list[torch.Tensor]:
        return list(self.params) if self.master is None else self.master


def trainable_weights(model: Any, master_copies: bool) -> Weights:
    params = [p for p in model.parameters() if p.requires_grad]
    return Weights(params, [p.detach().float().clone() for p in params] if master_copies else None)


def adamw(weights: Weights, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    # Fused AdamW: one kernel over all parameters (measured 4x faster than foreach on this CPU).
    return torch.optim.AdamW(weights.stepped, lr=learning_rate, weight_decay=weight_decay, fused=True)


def optimizer_step(optimizer: torch.optim.Optimizer, weights: Weights, lr: float) -> None:
    """One update at learning rate `lr` from the accumulated gradients, which it clears. With master
    copies, the bf16 gradients are stepped in fp32 and the bf16 weights take the rounded result."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if weights.master is not None:
        for m, p in zip(weights.master, weights.params, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None
    torch.nn.utils.clip_grad_norm_(weights.stepped, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    copy_master_to_params(weights)


def copy_master_to_params(weights: Weights) -> None:
    """The model's parameters take the master copies' values (in the parameters' dtype); none: no-op."""
    if weights.master is None:
        return
    with torch.no_grad():
        for m, p in zip(weights.master, weights.params, strict=True):
            p.copy_(m)
