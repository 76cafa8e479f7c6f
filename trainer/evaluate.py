"""Scoring and evaluation of a reward model: on pairs, accuracy, margin, reward stats and the length baseline; on
rated responses, Pearson and Spearman correlation with the rewards, AUC for 0/1 labels, the error on the rewards'
scale and the PASS/FAIL agreement at a threshold (a judge's), beside the same correlations for response length.

Imports gateway.formats (render + pooling, shared with the reward server) and torch/transformers.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gateway.formats import (
    Message,
    PreferencePair,
    RatedResponse,
    pearson,
    pool_rewards,
    ranks,
    render_responses,
    reward_histogram,
    spearman,
)
from trainer.data import pad_right
from trainer.objective import Pairwise, Pointwise


@dataclass(frozen=True)
class PairMetrics:
    count: int
    accuracy: float  # share of pairs where the chosen answer scores higher (ties count as wrong)
    mean_margin: float  # mean of r_chosen - r_rejected
    reward_mean: float  # over every scored answer, chosen and rejected
    reward_std: float
    length_baseline_accuracy: float  # "the longer answer wins" on the same pairs (ties count half)
    scores: tuple[float, ...] = field(default=(), repr=False)  # every answer's reward, for the histogram

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if k != "scores"}

    @property
    def scored(self) -> int:
        return 2 * self.count  # chosen and rejected

    def histogram(self, bins: int = 20) -> dict[str, list[float] | list[int]] | None:
        return reward_histogram(self.scores, bins)


@dataclass(frozen=True)
class RatedMetrics:
    count: int
    pearson: float | None  # of the raw rewards with the data's rewards (None: fewer than 2 rows, or a constant)
    spearman: float | None
    auc: float | None  # 0/1 rewards only: P(a 1-row scores above a 0-row), ties half
    rmse: float | None  # on the data's scale: the raw reward mapped back by the objective (Pointwise.to_target)
    pass_threshold: float
    pass_accuracy: float | None  # rows where prediction and reward fall on the same side of pass_threshold (None
    # when every reward is on one side of it: no PASS/FAIL to agree on)
    reward_mean: float
    reward_std: float
    length_spearman: float | None  # the "longer is better" baseline: Spearman of response length with the rewards
    scores: tuple[float, ...] = field(default=(), repr=False)

    @property
    def scored(self) -> int:
        return self.count

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if k != "scores"}

    def histogram(self, bins: int = 20) -> dict[str, list[float] | list[int]] | None:
        return reward_histogram(self.scores, bins)


Metrics = PairMetrics | RatedMetrics


def roc_auc(scores: Sequence[float], labels: Sequence[float]) -> float | None:
    """Mann-Whitney: P(score of a 1 > score of a 0), ties half; None without both classes."""
    positives = sum(1 for label in labels if label == 1.0)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    rank = ranks(scores)
    rank_sum = math.fsum(r for r, label in zip(rank, labels, strict=True) if label == 1.0)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def length_baseline(pairs: Sequence[PreferencePair]) -> float:
    if not pairs:
        return 0.0
    wins = 0.0
    for p in pairs:
        a, b = len(p.chosen.content), len(p.rejected.content)
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / len(pairs)


@torch.inference_mode()
def score_token_rows(
    model: Any,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    bf16: bool = False,
    batch_tokens: int = 16384,
) -> list[float]:
    """Scores for token rows, batched longest-first under a padded-token budget; input order kept.

    fp32 by default, which is what the reward server computes on CPU; `bf16` autocasts (GPU, or a
    CPU with native bf16) for speed, with scores that differ in the third significant digit."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    scores = [0.0] * len(rows)
    start = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    while start < len(order):
        width = len(rows[order[start]])
        size = max(1, batch_tokens // max(1, width))
        chunk = order[start : start + size]
        ids, mask = pad_right([rows[i] for i in chunk], pad_id)
        with autocast:
            out = pool_rewards(model, ids.to(device), mask.to(device)).float().cpu().tolist()
        for i, s in zip(chunk, out, strict=True):
            scores[i] = s
        start += size
    return scores


def score_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    max_length: int,
    device: torch.device | None = None,
    bf16: bool = False,
) -> list[float]:
    """The trainer's score for each conversation (last message = the response): render + pool."""
    device = device or next(model.parameters()).device
    rows = [render_responses(tokenizer, c[:-1], [c[-1]], max_length)[0].input_ids for c in conversations]
    return score_token_rows(model, rows, tokenizer.pad_token_id, device, bf16)


def evaluate_pairs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    max_length: int,
    device: torch.device | None = None,
    bf16: bool = False,
) -> PairMetrics:
    if not pairs:
        return PairMetrics(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    device = device or next(model.parameters()).device
    rows: list[tuple[int, ...]] = []
    for p in pairs:
        rows.extend(
            r.input_ids for r in render_responses(tokenizer, p.prompt, [p.chosen, p.rejected], max_length, p.tools)
        )
    was_training = model.training
    model.eval()
    scores = score_token_rows(model, rows, tokenizer.pad_token_id, device, bf16)
    model.train(was_training)
    chosen, rejected = scores[0::2], scores[1::2]
    gaps = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return PairMetrics(
        count=len(pairs),
        accuracy=sum(g > 0 for g in gaps) / len(gaps),
        mean_margin=statistics.fmean(gaps),
        reward_mean=statistics.fmean(scores),
        reward_std=statistics.pstdev(scores),
        length_baseline_accuracy=length_baseline(pairs),
        scores=tuple(scores),
    )


def rated_metrics(
    rows: Sequence[RatedResponse], scores: Sequence[float], to_target: Callable[[float], float], threshold: float
) -> RatedMetrics:
    """The metrics of raw `scores` against the rows' rewards (pure: tested without a model). `to_target` maps a
    raw score onto the rewards' scale (Pointwise.to_target) for the error and the PASS/FAIL agreement."""
    if not rows:
        return RatedMetrics(0, None, None, None, None, threshold, None, 0.0, 0.0, None)
    rewards = [r.reward for r in rows]
    predicted = [to_target(s) for s in scores]
    agree = sum((p >= threshold) == (r >= threshold) for p, r in zip(predicted, rewards, strict=True))
    both_sides = min(rewards) < threshold <= max(rewards)  # else the agreement says nothing (1-5 stars at 0.5)
    return RatedMetrics(
        count=len(rows),
        pearson=pearson(scores, rewards),
        spearman=spearman(scores, rewards),
        auc=roc_auc(scores, rewards) if all(r in (0.0, 1.0) for r in rewards) else None,
        rmse=math.sqrt(statistics.fmean((p - r) ** 2 for p, r in zip(predicted, rewards, strict=True))),
        pass_threshold=threshold,
        pass_accuracy=agree / len(rows) if both_sides else None,
        reward_mean=statistics.fmean(scores),
        reward_std=statistics.pstdev(scores),
        length_spearman=spearman([float(len(r.response.content)) for r in rows], rewards),
        scores=tuple(scores),
    )


def evaluate_rated(
    model: Any,
    tokenizer: Any,
    rows: Sequence[RatedResponse],
    max_length: int,
    to_target: Callable[[float], float],
    device: torch.device | None = None,
    bf16: bool = False,
    threshold: float = 0.5,
) -> RatedMetrics:
    if not rows:
        return rated_metrics(rows, [], to_target, threshold)
    device = device or next(model.parameters()).device
    token_rows = [render_responses(tokenizer, r.prompt, [r.response], max_length, r.tools)[0].input_ids for r in rows]
    was_training = model.training
    model.eval()
    scores = score_token_rows(model, token_rows, tokenizer.pad_token_id, device, bf16)
    model.train(was_training)
    return rated_metrics(rows, scores, to_target, threshold)


def evaluate_records(
    model: Any,
    records: Sequence[Any],
    *,
    objective: Pairwise | Pointwise,
    tokenizer: Any,
    max_length: int,
    device: torch.device | None = None,
    bf16: bool = False,
    threshold: float = 0.5,
) -> Metrics:
    """Pairs or rated responses, as the objective says the data is: the one place that tells them apart."""
    if isinstance(objective, Pointwise):
        return evaluate_rated(model, tokenizer, records, max_length, objective.to_target, device, bf16, threshold)
    return evaluate_pairs(model, tokenizer, records, max_length, device, bf16)


def target_mapping(card: dict[str, Any]) -> Callable[[float], float]:
    """How a model's raw score maps onto rewards' scale: its pointwise objective when it was trained on rated
    responses, else the gateway's normalized score sigmoid((r - mean) / std) from the card's reward_stats (what a
    criterion's PASS threshold applies to)."""
    objective = card.get("objective") or {}
    if objective.get("data") == "rated":
        return Pointwise(
            objective["loss"], objective.get("target_mean", 0.0), objective.get("target_std", 1.0)
        ).to_target
    stats = card.get("reward_stats") or {}
    mean, std = float(stats.get("mean") or 0.0), float(stats.get("std") or 0.0)
    std = std if std > 0 else 1.0

    def normalized(raw: float) -> float:
        return 1.0 / (1.0 + math.exp(-max(-700.0, (raw - mean) / std)))

    return normalized


def load_reward_model(directory: str | Path, device: str = "auto") -> tuple[Any, Any, dict[str, Any]]:
    """A trained reward-model directory -> (model in eval mode, tokenizer, rewardgate.json)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(directory)
    meta_path = directory / "rewardgate.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    model = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer, meta
