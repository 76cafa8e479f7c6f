"""Pairs or rated responses -> token ids -> length-grouped, right-padded batches (for pairs: chosen rows first,
then rejected rows; for rated responses: one row each, with its target and weight); the TRAIN/TEST records of one
run and the objective their data calls for.

Imports gateway.formats (the one render function), trainer.config and torch; nothing else from the project.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from gateway.formats import Message, PairSet, PreferencePair, RatedResponse, RatedSet, render_responses
from trainer.config import TrainConfig
from trainer.objective import Pairwise, Pointwise, pointwise_objective


@dataclass(frozen=True)
class TokenizedPair:
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    margin: float
    chosen_chars: int = 0  # the answers' whole lengths in characters (the length-debiased objective reads them)
    rejected_chars: int = 0

    @property
    def tokens(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def longest(self) -> int:
        return max(len(self.chosen), len(self.rejected))


@dataclass(frozen=True)
class TokenizedRow:
    """One rated response: its token ids, its training target (objective.target of the reward), its weight."""

    ids: tuple[int, ...]
    target: float
    weight: float = 1.0

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def longest(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class TruncationReport:
    pairs_in: int  # records in: pairs, or rated responses (`unit`)
    prompts_trimmed: int  # records kept with prompt tokens cut from the left
    dropped: int  # records left out because a response alone exceeded max_length (long_answers="drop")
    unit: str = "pairs"
    cut: int = 0  # records kept with a response cut to its head (long_answers="keep"), as the server scores it
    prefixes: int = 0  # copies added with both answers cut to a partial prefix (partial_prefixes)

    def to_dict(self) -> dict[str, int]:
        return {
            f"{self.unit}_in": self.pairs_in,
            "prompts_trimmed": self.prompts_trimmed,
            "answers_cut": self.cut,
            "dropped": self.dropped,
            **({"partial_prefix_pairs": self.prefixes} if self.prefixes else {}),
        }


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int, long_answers: str = "keep"
) -> tuple[list[TokenizedPair], TruncationReport]:
    """Render every pair with the shared render function. A pair with a response longer than the budget is
    kept with that response cut to its head, exactly what the reward server scores for it (`long_answers="keep"`),
    or left out (`"drop"`); trimmed prompts are kept. All three are counted and reported, never silent."""
    out: list[TokenizedPair] = []
    trimmed = dropped = cut = 0
    for index, pair in enumerate(pairs):
        chosen, rejected = render_responses(
            tokenizer, pair.prompt, [pair.chosen, pair.rejected], max_length, pair.tools
        )
        if not chosen.input_ids or not rejected.input_ids:
            raise ValueError(f"the tokenizer produced no tokens for TRAIN pair {index}")
        if chosen.response_tokens_truncated or rejected.response_tokens_truncated:
            if long_answers == "drop":
                dropped += 1
                continue
            cut += 1
        trimmed += bool(chosen.prompt_tokens_trimmed or rejected.prompt_tokens_trimmed)
        lengths = len(pair.chosen.content), len(pair.rejected.content)
        out.append(TokenizedPair(chosen.input_ids, rejected.input_ids, pair.margin, *lengths))
    return out, TruncationReport(len(pairs), trimmed, dropped, cut=cut)


def prefix_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, cuts: Sequence[int], seed: int
) -> list[PreferencePair]:
    """Partial reward modelling: per pair, a copy with both answers cut to their first T tokens (T drawn, seeded,
    from `cuts`), keeping the pair's preference: trained on these, the reward of an answer's head predicts the
    whole answer's preference, which is what early rejection scores mid-stream. A pair whose answers both fit in
    T tokens adds nothing (its copy would be itself); cut text is the tokenizer's characters up to token T, as a
    stream's partial answer is."""
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        limit = rng.choice(list(cuts))
        chosen, rejected = (_head(tokenizer, message, limit) for message in (pair.chosen, pair.rejected))
        if chosen is not pair.chosen or rejected is not pair.rejected:
            out.append(dataclasses.replace(pair, chosen=chosen, rejected=rejected))
    return out


def _head(tokenizer: Any, message: Message, tokens: int) -> Message:
    """The message with its text cut to `tokens` tokens (and, cut, without its tool calls: a stream's head has
    none yet); the message itself when its text fits."""
    offsets = tokenizer(message.content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= tokens:
        return message
    return dataclasses.replace(message, content=message.content[: offsets[tokens - 1][1]], tool_calls=())


def tokenize_rated(
    rows: Sequence[RatedResponse], tokenizer: Any, max_length: int, objective: Pointwise, long_answers: str = "keep"
) -> tuple[list[TokenizedRow], TruncationReport]:
    """`tokenize_pairs` for rated responses: the same render, the same truncation rule, the target of each."""
    out: list[TokenizedRow] = []
    trimmed = dropped = cut = 0
    for index, row in enumerate(rows):
        (rendered,) = render_responses(tokenizer, row.prompt, [row.response], max_length, row.tools)
        if not rendered.input_ids:
            raise ValueError(f"the tokenizer produced no tokens for TRAIN row {index}")
        if rendered.response_tokens_truncated:
            if long_answers == "drop":
                dropped += 1
                continue
            cut += 1
        trimmed += bool(rendered.prompt_tokens_trimmed)
        out.append(TokenizedRow(rendered.input_ids, objective.target(row.reward), row.weight))
    return out, TruncationReport(len(rows), trimmed, dropped, "rows", cut)


@dataclass(frozen=True)
class TrainingData:
    """The records of one run: TRAIN (sampled down to max_pairs) tokenized for training, TEST for evaluation, and
    the objective: Bradley-Terry for pairs, the pointwise loss the TRAIN rewards call for for rated responses."""

    dataset: PairSet | RatedSet  # the whole file: its counts and skipped lines go into the model card
    train: list[Any]  # PreferencePair or RatedResponse, as the file holds
    test: list[Any]
    examples: list[Any]  # train tokenized (TokenizedPair or TokenizedRow), less those whose answer did not fit
    truncation: TruncationReport
    objective: Pairwise | Pointwise

    @property
    def unit(self) -> str:
        return self.truncation.unit

    def summary(self) -> str:
        return (
            f"{self.dataset.summary()}; training on {len(self.examples)} {self.unit}; "
            f"truncation {self.truncation.to_dict()}"
        )


def training_data(cfg: TrainConfig, dataset: PairSet | RatedSet, tokenizer: Any) -> TrainingData:
    """Split by each record's `split`, take at most `max_pairs` TRAIN records (a seeded sample), tokenize them."""
    train: list[Any] = list(dataset.split("TRAIN"))
    test: list[Any] = list(dataset.split("TEST"))
    if cfg.max_pairs:
        train = random.Random(cfg.seed).sample(train, min(cfg.max_pairs, len(train)))
    objective: Pairwise | Pointwise
    examples: list[Any]
    if isinstance(dataset, RatedSet):
        if cfg.length_debiased or cfg.partial_prefixes:
            raise ValueError("length_debiased, partial_prefixes: need preference pairs (a rated-response file given)")
        if not train:
            raise ValueError(f"{cfg.data}: no TRAIN rows")
        objective = pointwise_objective([r.reward for r in train])
        examples, truncation = tokenize_rated(train, tokenizer, cfg.max_length, objective, cfg.long_answers)
    else:
        objective = Pairwise(cfg.center_rewards, cfg.length_debiased)
        prefixes = prefix_pairs(train, tokenizer, cfg.prefix_cuts(), cfg.seed) if cfg.partial_prefixes else []
        examples, truncation = tokenize_pairs([*train, *prefixes], tokenizer, cfg.max_length, cfg.long_answers)
        truncation = dataclasses.replace(truncation, pairs_in=len(train), prefixes=len(prefixes))
    if not examples:
        raise ValueError(f"{cfg.data}: no TRAIN {truncation.unit} fit max_length={cfg.max_length}")
    return TrainingData(dataset, train, test, examples, truncation, objective)


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


def collate(batch: Sequence[TokenizedPair] | Sequence[TokenizedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """One forward pass for the whole batch. Pairs: rows [0, B) are chosen, rows [B, 2B) rejected, with their
    margins and the answers' lengths in characters. Rated responses: one row each, with `target` and `weight`."""
    if batch and isinstance(batch[0], TokenizedRow):
        rows = cast(Sequence[TokenizedRow], batch)
        ids, mask = pad_right([r.ids for r in rows], pad_id)
        targets = torch.tensor([r.target for r in rows], dtype=torch.float32)
        weights = torch.tensor([r.weight for r in rows], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "target": targets, "weight": weights}
    batch = cast(Sequence[TokenizedPair], batch)
    ids, mask = pad_right([p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
    margins = torch.tensor([p.margin for p in batch], dtype=torch.float32)
    lengths = torch.tensor([p.chosen_chars for p in batch] + [p.rejected_chars for p in batch], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "margin": margins, "length": lengths}
