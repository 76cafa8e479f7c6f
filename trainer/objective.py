"""The objectives (Bradley-Terry on preference pairs; regression or binary cross-entropy on rated responses,
chosen from the data) and the learning-rate schedule (and its fit to a time budget): pure functions and frozen
values, tested on their own.

Imports torch only; nothing from the project.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

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


def regression_loss(
    rewards: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean(weight * (r - target)^2): the reward regressed on a (standardized) target. A weight multiplies its
    row's loss, so sharding a batch over processes keeps the gradient (every row counts by itself)."""
    err = rewards.float() - targets.float()
    per_row = err**2
    loss = (per_row * weights.float()).mean() if weights is not None else per_row.mean()
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "rmse": float(per_row.mean().sqrt()),
            "reward_mean": float(rewards.float().mean()),
        }
    return loss, stats


def binary_loss(
    rewards: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean(weight * BCE(sigmoid(r), label)): the reward is the logit of P(label = 1), as a thumbs-up/down or
    PASS/FAIL classifier. `accuracy` counts r > 0 as predicting 1."""
    per_row = F.binary_cross_entropy_with_logits(rewards.float(), labels.float(), reduction="none")
    loss = (per_row * weights.float()).mean() if weights is not None else per_row.mean()
    with torch.no_grad():
        hits = ((rewards.float() > 0) == (labels > 0.5)).float().mean()
        stats = {"loss": float(loss), "accuracy": float(hits), "reward_mean": float(rewards.float().mean())}
    return loss, stats


def batch_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two (batch,) tensors, differentiable; 0 when either is constant."""
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    correlation: torch.Tensor = (x * y).sum() / (x.norm() * y.norm() + 1e-8)
    return correlation


def length_debiased_loss(
    outputs: torch.Tensor, lengths: torch.Tensor, margin: torch.Tensor | None = None, center_coef: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry on the sum of two heads, quality (column 0) + length (column 1), plus a decorrelation penalty
    over the batch's pairs: |corr(quality gap, log-length gap)|, each gap chosen minus rejected. In the spirit of
    ODIN (Chen et al. 2024): the preference is fitted by both heads together, and what the answers' length
    difference explains can only go to the length head unpenalized; only the quality head is served. Rewarding
    corr(length-head gap, log-length gap) too, as ODIN does, swamped the preference term here (measured). Gaps, not
    single rewards: batches are grouped by length, so within a batch the rewards' own lengths vary little while the
    pairs' length differences do.
    `outputs` is (2B, 2), chosen rows then rejected rows; `lengths` the answers' lengths in characters."""
    n = outputs.shape[0] // 2
    quality, length_head = outputs[:, 0].float(), outputs[:, 1].float()
    total = quality + length_head
    loss, stats = bradley_terry_loss(total[:n], total[n:], margin, center_coef)
    log_length = lengths.float().log1p()
    length_gap = log_length[:n] - log_length[n:]
    quality_corr = batch_correlation(quality[:n] - quality[n:], length_gap)
    length_corr = batch_correlation(length_head[:n] - length_head[n:], length_gap)
    loss = loss + quality_corr.abs()
    with torch.no_grad():
        stats |= {
            "loss": float(loss),
            "quality_accuracy": float((quality[:n] > quality[n:]).float().mean()),
            "quality_length_corr": float(quality_corr),
            "length_head_corr": float(length_corr),
        }
    return loss, stats


@dataclass(frozen=True)
class Pairwise:
    """Bradley-Terry on preference pairs: a batch is chosen rows then rejected rows (trainer.data.collate). With
    `length_debiased`, the model has a second (length) output and the loss is `length_debiased_loss`; the saved
    model keeps the first (quality) output only (trainer.model.trained_model)."""

    center_coef: float = 0.0
    length_debiased: bool = False
    kind: Literal["pairs"] = "pairs"

    @property
    def outputs(self) -> int:
        return 2 if self.length_debiased else 1

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """`outputs`: (2B,) rewards or (2B, k) head outputs (column 0 is the reward)."""
        if self.length_debiased:
            return length_debiased_loss(outputs, batch["length"], batch["margin"], self.center_coef)
        rewards = outputs[:, 0] if outputs.dim() == 2 else outputs
        n = rewards.shape[0] // 2
        return bradley_terry_loss(rewards[:n], rewards[n:], batch["margin"], self.center_coef)

    def describe(self) -> str:
        if self.length_debiased:
            return (
                "bradley_terry on quality + length heads, quality decorrelated from the answer's length (served: the "
                "quality head)"
            )
        return "bradley_terry: -logsigmoid(r_chosen - r_rejected - margin) on preference pairs"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data": "pairs", "loss": "bradley_terry", "center_rewards": self.center_coef}
        if self.length_debiased:
            out |= {"length_debiased": True, "served": "the quality head (the length head is dropped on save)"}
        return out


@dataclass(frozen=True)
class Pointwise:
    """A loss on rated responses, chosen from the TRAIN rewards by `pointwise_objective`: `binary_cross_entropy`
    when every reward is 0 or 1 (the reward is the logit of P(1)), else `regression` on targets standardized by
    the TRAIN mean and std (the reward predicts (reward - mean) / std). `to_target` maps a raw reward back to the
    data's scale, which is how evaluation compares it with the rewards (and a judge's PASS threshold)."""

    loss_name: Literal["regression", "binary_cross_entropy"]
    target_mean: float = 0.0
    target_std: float = 1.0
    kind: Literal["rated"] = "rated"

    @property
    def outputs(self) -> int:
        return 1

    def target(self, reward: float) -> float:
        if self.loss_name == "binary_cross_entropy":
            return reward
        return (reward - self.target_mean) / self.target_std

    def to_target(self, raw: float) -> float:
        if self.loss_name == "binary_cross_entropy":
            return 1.0 / (1.0 + math.exp(-raw)) if raw >= -700 else 0.0
        return self.target_mean + self.target_std * raw

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = outputs[:, 0] if outputs.dim() == 2 else outputs
        if self.loss_name == "binary_cross_entropy":
            return binary_loss(rewards, batch["target"], batch["weight"])
        return regression_loss(rewards, batch["target"], batch["weight"])

    def describe(self) -> str:
        if self.loss_name == "binary_cross_entropy":
            return "binary_cross_entropy: every reward is 0 or 1, so the reward model is trained as the logit of P(1)"
        return (
            f"regression: mean squared error on standardized rewards ((reward - {self.target_mean:.4g}) / "
            f"{self.target_std:.4g}, the TRAIN mean and std)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": "rated",
            "loss": self.loss_name,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "why": "every TRAIN reward is 0 or 1"
            if self.loss_name == "binary_cross_entropy"
            else "rewards are not all 0/1",
        }


def pointwise_objective(rewards: Sequence[float]) -> Pointwise:
    """The loss the data calls for: binary cross-entropy for 0/1 labels, else regression on standardized targets
    (a constant reward has std 0: it is centred only)."""
    if not rewards:
        raise ValueError("no rewards to choose a loss from")
    if all(r in (0.0, 1.0) for r in rewards):
        return Pointwise("binary_cross_entropy")
    mean = math.fsum(rewards) / len(rewards)
    std = math.sqrt(math.fsum((r - mean) ** 2 for r in rewards) / len(rewards))
    return Pointwise("regression", mean, std if std > 0 else 1.0)


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
