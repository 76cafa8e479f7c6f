"""Scoring and pairwise evaluation of a reward model: accuracy, margin, reward stats, length baseline.

Imports gateway.formats (render + pooling, shared with the reward server) and torch/transformers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gateway.formats import Message, PreferencePair, pool_rewards, render_responses
from trainer.data import pad_right


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

    def histogram(self, bins: int = 20) -> dict[str, list[float] | list[int]] | None:
        """{"edges": bins + 1 values, "counts": bins}: the rewards' distribution, drawn by the console."""
        if not self.scores:
            return None
        low, high = min(self.scores), max(self.scores)
        width = (high - low) / bins or 1.0
        counts = [0] * bins
        for score in self.scores:
            counts[min(bins - 1, int((score - low) / width))] += 1
        return {"edges": [round(low + i * width, 6) for i in range(bins + 1)], "counts": counts}


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
