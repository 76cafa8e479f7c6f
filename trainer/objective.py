"""The Bradley-Terry objective and the learning-rate schedule (and its fit to a time budget): pure functions,
tested on their own.

Imports torch only; nothing from the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class Schedule:
    """The learning rate over a run: warmup, then decay to 0 by `total_steps`. `planned_steps` is the run's
    whole length; under a time budget, `fitted` moves `total_steps` (and shortens the warmup) to the steps
    the budget allows, so the decay completes before `stops_early` ends the run."""

    peak_lr: float
    kind: str  # cosine, linear or constant
    planned_steps: int
    total_steps: int
    warmup_steps: int
    warmup_ratio: float
    budget_s: float = 0.0  # 0: no time budget

    @classmethod
    def planned(cls, peak_lr: float, kind: str, steps: int, warmup_ratio: float, budget_s: float = 0.0) -> Schedule:
        return cls(peak_lr, kind, steps, steps, int(warmup_ratio * steps), warmup_ratio, budget_s)

    def lr(self, step: int) -> float:
        return self.peak_lr * lr_multiplier(step, self.total_steps, self.warmup_steps, self.kind)

    def fitted(self, step: int, steps_run: int, elapsed_s: float) -> Schedule:
        """Refitted after `step`: `steps_run` steps of this run took `elapsed_s` (a resumed run times its own
        steps); the steps that fit the rest of the budget at that pace become the schedule's end, never past
        `planned_steps`. The warmup shrinks with it: a short budget still gets its decay."""
        left = (self.budget_s - elapsed_s) / (elapsed_s / steps_run)
        total = min(self.planned_steps, step + max(0, int(left)))
        return replace(self, total_steps=total, warmup_steps=min(self.warmup_steps, int(self.warmup_ratio * total)))

    def stops_early(self, step: int, elapsed_s: float) -> bool:
        """Whether a time-budgeted run stops after `step`: the budget is spent or the fitted schedule has
        ended, and the run has not simply reached its planned end (that is no early stop)."""
        return (elapsed_s > self.budget_s or step >= self.total_steps) and step < self.planned_steps
