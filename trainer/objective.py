"""The Bradley-Terry objective and the learning-rate schedule: pure functions, tested on their own.

Imports torch only; nothing from the project.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """-logsigmoid(r_chosen - r_rejected - margin), mean over pairs, plus an optional centring term.

    Centring (coef * mean((r_c + r_r)^2), as in TRL's `center_rewards_coefficient`) keeps rewards
    near zero so scores from different models are comparable. Returns the loss and batch metrics.
    """
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen.float() + rejected.float()) ** 2).mean()
    with torch.no_grad():
        gap = chosen.float() - rejected.float()
        both = torch.cat([chosen.float(), rejected.float()])
        stats = {
            "loss": float(loss),
            "accuracy": float((gap > 0).float().mean()),
            "margin": float(gap.mean()),
            "reward_mean": float(both.mean()),
            "reward_std": float(both.std()) if both.numel() > 1 else 0.0,
        }
    return loss, stats


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup to 1, then cosine or linear decay to 0 (or constant) by `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
