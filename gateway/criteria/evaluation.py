"""Offline evaluation of any criterion (`rewardgate eval`): pairwise accuracy on preference pairs beside the
"longer answer wins" baseline, and best-of-N replay over stored candidates beside random, longest and oracle picks.

Works on any `Criterion` (reward model, LLM judge, rule), so the numbers mean the same for every kind: a
criterion prefers the answer with the higher normalized score. Must not import starlette, torch or trainer.

Replay rows (JSONL): `{"id"?, "messages": [prompt turns], "candidates": [str | assistant message, ...],
"labels"?: [number | null, ...]}`. A pick is the candidate with the highest normalized score (ties: the first);
candidates the criterion errored on are never picked. With labels, each selector's value is the mean label of
its picks over the rows where every considered candidate has a label: random = the mean label of a row's
candidates (the expectation of a uniform pick, not a sample), longest = the most characters, oracle = the best
label.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.criteria import Criterion, CriterionResult
from gateway.formats import LineError, Message, PairError, PreferencePair, parse_message, without_bom


@dataclass(frozen=True)
class PairwiseReport:
    pairs: int
    accuracy: float | None  # ties count half; pairs the criterion errored on are left out
    ties: int
    errored: int
    length_baseline: float | None  # the longer answer wins, ties half, over the same pairs
    # each pair's normalized (chosen, rejected) scores, in input order; None where the criterion errored
    scores: tuple[tuple[float | None, float | None], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "accuracy": self.accuracy,
            "ties": self.ties,
            "errored": self.errored,
            "length_baseline": self.length_baseline,
        }


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


async def pairwise_accuracy(
    criterion: Criterion, pairs: Sequence[PreferencePair], *, concurrency: int = 16
) -> PairwiseReport:
    """Chosen and rejected of each pair scored in one call (they share the prompt), `concurrency` pairs at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(pair: PreferencePair) -> list[CriterionResult]:
        async with gate:
            return await criterion.score(pair.prompt, [pair.chosen, pair.rejected])

    answers = await asyncio.gather(*(one(p) for p in pairs))
    wins = length = 0.0
    ties = errored = 0
    for pair, (chosen, rejected) in zip(pairs, answers, strict=True):
        if chosen.normalized is None or rejected.normalized is None:
            errored += 1
            continue
        ties += chosen.normalized == rejected.normalized
        wins += _win(chosen.normalized, rejected.normalized)
        length += _win(len(pair.chosen.content), len(pair.rejected.content))
    scored = len(pairs) - errored
    scores = tuple((chosen.normalized, rejected.normalized) for chosen, rejected in answers)
    return PairwiseReport(
        len(pairs), wins / scored if scored else None, ties, errored, length / scored if scored else None, scores
    )


# ---------------------------------------------------------------- best-of-N replay


@dataclass(frozen=True)
class ReplayRow:
    id: str
    prompt: tuple[Message, ...]
    candidates: tuple[Message, ...]
    labels: tuple[float | None, ...] | None


def parse_replay_rows(
    lines: Iterable[str | bytes], *, labels_field: str = "labels", max_candidates: int = 0
) -> tuple[list[ReplayRow], list[LineError]]:
    """(rows, bad lines); `max_candidates` > 0 keeps the first K candidates (and labels) of each row."""
    rows: list[ReplayRow] = []
    errors: list[LineError] = []
    for number, raw in enumerate(lines, start=1):
        text = without_bom(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw, number)
        if not text.strip():
            continue
        try:
            rows.append(_replay_row(json.loads(text), number, labels_field, max_candidates))
        except PairError as exc:
            errors.append(LineError(number, str(exc)))
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer of more than 4,300 digits
            errors.append(LineError(number, "invalid JSON"))
    return rows, errors


def _replay_row(obj: object, number: int, labels_field: str, limit: int) -> ReplayRow:
    if not isinstance(obj, dict):
        raise PairError("a replay row must be a JSON object")
    turns = obj.get("messages")
    if not isinstance(turns, list) or not turns:
        raise PairError("messages: missing or empty message list")
    prompt = tuple(parse_message(m, f"messages[{i}]") for i, m in enumerate(turns))
    raw = obj.get("candidates")
    if not isinstance(raw, list) or not raw:
        raise PairError("candidates: missing or empty list")
    raw = raw[:limit] if limit > 0 else raw
    candidates = tuple(
        parse_message({"role": "assistant", "content": c} if isinstance(c, str) else c, f"candidates[{i}]")
        for i, c in enumerate(raw)
    )
    labels: tuple[float | None, ...] | None = None
    if obj.get(labels_field) is not None:
        values = obj[labels_field]
        if not isinstance(values, list) or len(values) < len(candidates):
            raise PairError(f"{labels_field}: expected a list with one label per candidate")
        values = values[: len(candidates)]
        for i, v in enumerate(values):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                raise PairError(f"{labels_field}[{i}]: expected a number or null, got {v!r}")
        labels = tuple(None if v is None else float(v) for v in values)
    row_id = obj.get("id", f"line-{number}")
    return ReplayRow(str(row_id), prompt, candidates, labels)


def pick(results: Sequence[CriterionResult]) -> int | None:
    """The candidate with the highest normalized score (the first of equals); None when every one errored."""
    best: int | None = None
    for i, result in enumerate(results):
        if result.normalized is not None and (best is None or result.normalized > (results[best].normalized or 0)):
            best = i
    return best


async def replay(criterion: Criterion, rows: Sequence[ReplayRow], *, concurrency: int = 8) -> list[int | None]:
    """The criterion's pick per row (all of a row's candidates in one call), `concurrency` rows at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(row: ReplayRow) -> int | None:
        async with gate:
            return pick(await criterion.score(row.prompt, row.candidates))

    return list(await asyncio.gather(*(one(r) for r in rows)))


def replay_report(rows: Sequence[ReplayRow], picks: Sequence[int | None]) -> dict[str, Any]:
    """Mean label of the criterion's picks beside random, longest and oracle, over the fully labelled rows."""
    values: dict[str, list[float]] = {"criterion": [], "random": [], "longest": [], "oracle": []}
    unpicked = 0
    for row, chosen in zip(rows, picks, strict=True):
        if chosen is None:
            unpicked += 1
            continue
        labels = row.labels
        if labels is None or any(v is None for v in labels):
            continue
        known = [float(v) for v in labels if v is not None]
        longest = max(range(len(row.candidates)), key=lambda i: (len(row.candidates[i].content), -i))
        values["criterion"].append(known[chosen])
        values["random"].append(sum(known) / len(known))
        values["longest"].append(known[longest])
        values["oracle"].append(max(known))
    means = {name: (sum(v) / len(v) if v else None) for name, v in values.items()}
    return {"rows": len(rows), "labelled_rows": len(values["criterion"]), "unpicked": unpicked, "mean_label": means}


def published_picks_report(
    rows: Sequence[Mapping[str, Any]], *, labels_field: str, max_candidates: int
) -> dict[str, Any]:
    """Mean label of other selectors' stored picks (`rm_picks`: {name: index}) over the rows where the pick is
    among the first `max_candidates` labelled candidates; with the count of rows that qualified."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        labels = row.get(labels_field) or []
        for name, index in (row.get("rm_picks") or {}).items():
            if isinstance(index, int) and 0 <= index < max_candidates and index < len(labels):
                label = labels[index]
                if isinstance(label, int | float):
                    sums.setdefault(name, []).append(float(label))
    return {name: {"mean_label": sum(v) / len(v), "rows": len(v)} for name, v in sorted(sums.items())}
