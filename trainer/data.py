"""Pairs -> token ids -> length-grouped, right-padded batches (chosen rows first, then rejected rows); the
TRAIN/TEST pairs of one run.

Imports gateway.formats (the one render function), trainer.config and torch; nothing else from the project.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gateway.formats import PairSet, PreferencePair, render_responses
from trainer.config import TrainConfig


@dataclass(frozen=True)
class TokenizedPair:
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    margin: float

    @property
    def tokens(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def longest(self) -> int:
        return max(len(self.chosen), len(self.rejected))


@dataclass(frozen=True)
class TruncationReport:
    pairs_in: int
    prompts_trimmed: int  # pairs kept with prompt tokens cut from the left
    dropped: int  # pairs left out because a response alone exceeded max_length

    def to_dict(self) -> dict[str, int]:
        return {"pairs_in": self.pairs_in, "prompts_trimmed": self.prompts_trimmed, "dropped": self.dropped}


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int
) -> tuple[list[TokenizedPair], TruncationReport]:
    """Render every pair with the shared render function. A pair whose response had to be cut is
    dropped (training on a cut answer teaches the wrong thing); trimmed prompts are kept. Both are
    counted and reported, never silent."""
    out: list[TokenizedPair] = []
    trimmed = dropped = 0
    for index, pair in enumerate(pairs):
        chosen, rejected = render_responses(
            tokenizer, pair.prompt, [pair.chosen, pair.rejected], max_length, pair.tools
        )
        if not chosen.input_ids or not rejected.input_ids:
            raise ValueError(f"the tokenizer produced no tokens for TRAIN pair {index}")
        if chosen.response_tokens_truncated or rejected.response_tokens_truncated:
            dropped += 1
            continue
        trimmed += bool(chosen.prompt_tokens_trimmed or rejected.prompt_tokens_trimmed)
        out.append(TokenizedPair(chosen.input_ids, rejected.input_ids, pair.margin))
    return out, TruncationReport(len(pairs), trimmed, dropped)


@dataclass(frozen=True)
class TrainingData:
    """The pairs of one run: TRAIN (sampled down to max_pairs) tokenized for training, TEST for evaluation."""

    dataset: PairSet  # the whole file: its counts and skipped lines go into the model card
    train_pairs: list[PreferencePair]
    test_pairs: list[PreferencePair]
    examples: list[TokenizedPair]  # train_pairs tokenized, less those whose answer did not fit
    truncation: TruncationReport

    def summary(self) -> str:
        return (
            f"{self.dataset.summary()}; training on {len(self.examples)} pairs; truncation {self.truncation.to_dict()}"
        )


def training_data(cfg: TrainConfig, dataset: PairSet, tokenizer: Any) -> TrainingData:
    """Split by each pair's `split`, take at most `max_pairs` TRAIN pairs (a seeded sample), tokenize them."""
    train_pairs, test_pairs = dataset.split("TRAIN"), dataset.split("TEST")
    if cfg.max_pairs:
        train_pairs = random.Random(cfg.seed).sample(train_pairs, min(cfg.max_pairs, len(train_pairs)))
    examples, truncation = tokenize_pairs(train_pairs, tokenizer, cfg.max_length)
    if not examples:
        raise ValueError(f"{cfg.data}: no TRAIN pairs fit max_length={cfg.max_length}")
    return TrainingData(dataset, train_pairs, test_pairs, examples, truncation)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, group_factor: int = 32
) -> list[list[int]]:
    """Shuffle, sort within mega-groups of batch_size * group_factor by length, cut into batches,
    shuffle the batches: similar lengths share a batch (little padding) while order stays random."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: pool_rewards reads the last real token from the mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def collate(batch: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One forward pass for the whole batch: rows [0, B) are chosen, rows [B, 2B) rejected."""
    ids, mask = pad_right([p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
    margins = torch.tensor([p.margin for p in batch], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "margin": margins}
