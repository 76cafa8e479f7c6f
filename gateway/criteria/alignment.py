"""Alignment of a criterion with human labels: the labelled-set format, scoring it with any criterion, and the
report (precision, recall, F1 of PASS, accuracy, and the disagreements).

A labelled row is one JSON object: `{"id"?: str, "input": [messages], "output": str | assistant message,
"label": "PASS" | "FAIL"}` (`messages` is accepted for `input`; `label` may also be true/false). A criterion
predicts PASS when its normalized score (0..1; a reward model's sigmoid((r - mean) / std)) is >= the threshold,
0.5 by default. PASS is the positive class. Rows the criterion errored on are reported apart and left out of the
metrics. May import only criteria.base, definitions and formats (DESIGN.md import rules).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.formats import LineError, Message, PairError, parse_message, without_bom

from .base import Criterion, CriterionResult

MAX_LISTED = 100  # disagreements and errors listed in a report (the counts are always complete)


class LabelledSetError(ValueError):
    """A labelled set has bad rows; `errors` lists every one with its line number and field."""

    def __init__(self, errors: Sequence[LineError]) -> None:
        self.errors = tuple(errors)
        super().__init__(f"{len(self.errors)} invalid labelled row(s); first: {self.errors[0]}")


@dataclass(frozen=True, slots=True)
class LabelledRow:
    id: str
    input: tuple[Message, ...]
    output: Message
    passed: bool  # the human judgement


def parse_labelled_row(obj: object, line: int) -> LabelledRow:
    """One row; PairError names the field."""
    if not isinstance(obj, dict):
        raise PairError("a labelled row must be a JSON object")
    turns = obj.get("input", obj.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise PairError("input: missing or empty message list")
    prompt = tuple(parse_message(m, f"input[{i}]") for i, m in enumerate(turns))
    raw_output = obj.get("output")
    if isinstance(raw_output, str):
        raw_output = {"role": "assistant", "content": raw_output}
    output = parse_message(raw_output, "output")
    if output.role != "assistant":
        raise PairError(f"output: must be an assistant message, got role {output.role!r}")
    label = obj.get("label")
    if isinstance(label, str) and label.upper() in ("PASS", "FAIL"):
        passed = label.upper() == "PASS"
    elif isinstance(label, bool):
        passed = label
    else:
        raise PairError(f"label: expected 'PASS' or 'FAIL', got {label!r}")
    row_id = obj.get("id", f"line-{line}")
    if not isinstance(row_id, str | int) or isinstance(row_id, bool):
        raise PairError(f"id: expected a string, got {type(row_id).__name__}")
    return LabelledRow(str(row_id), prompt, output, passed)


def parse_labelled_set(lines: Iterable[str | bytes]) -> list[LabelledRow]:
    """Every row of a JSONL labelled set; LabelledSetError lists every bad line (blank lines are skipped)."""
    rows: list[LabelledRow] = []
    errors: list[LineError] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = without_bom(raw.decode("utf-8") if isinstance(raw, bytes) else raw, number)
            if not text.strip():
                continue
            rows.append(parse_labelled_row(json.loads(text), number))
        except UnicodeDecodeError:
            errors.append(LineError(number, "not UTF-8 text"))
        except PairError as exc:
            errors.append(LineError(number, str(exc)))
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer of more than 4,300 digits
            errors.append(LineError(number, "invalid JSON"))
    if errors:
        raise LabelledSetError(errors)
    if not rows:
        raise LabelledSetError([LineError(0, "the labelled set is empty")])
    return rows


async def score_rows(
    criterion: Criterion, rows: Sequence[LabelledRow], *, concurrency: int = 8
) -> list[CriterionResult]:
    """The criterion's result on each row's output (rows have their own inputs: one call per row, `concurrency`
    at a time); a criterion failure becomes an error result, as in score_all."""
    gate = asyncio.Semaphore(concurrency)

    async def one(row: LabelledRow) -> CriterionResult:
        async with gate:
            try:
                (result,) = await criterion.score(row.input, [row.output])
            except Exception as exc:  # reported per row, like score_all does per candidate
                return CriterionResult.error("criterion_error", f"{type(exc).__name__}: {exc}", version=None)
            return result

    return list(await asyncio.gather(*(one(row) for row in rows)))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def alignment_report(
    rows: Sequence[LabelledRow], results: Sequence[CriterionResult], *, threshold: float = 0.5
) -> dict[str, Any]:
    """Confusion counts, precision/recall/F1 of PASS, accuracy, and the rows where the criterion disagreed."""
    if len(rows) != len(results):
        raise ValueError(f"{len(rows)} rows but {len(results)} results")
    tp = fp = tn = fn = 0
    disagreements: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for row, result in zip(rows, results, strict=True):
        if not result.ok or result.normalized is None:
            errors.append({"id": row.id, "errorCode": result.error_code, "errorMessage": result.error_message})
            continue
        predicted = result.normalized >= threshold
        tp += predicted and row.passed
        fp += predicted and not row.passed
        tn += not predicted and not row.passed
        fn += not predicted and row.passed
        if predicted != row.passed:
            disagreements.append(
                {
                    "id": row.id,
                    "label": "PASS" if row.passed else "FAIL",
                    "predicted": "PASS" if predicted else "FAIL",
                    "score": result.score,
                    "normalized": result.normalized,
                    "explanation": result.explanation,
                }
            )
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (
        None
        if precision is None or recall is None or precision + recall == 0
        else 2 * precision * recall / (precision + recall)
    )
    return {
        "rows": len(rows),
        "scored": tp + fp + tn + fn,
        "errored": len(errors),
        "threshold": threshold,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "disagreements": len(disagreements),
        "disagreement_rows": disagreements[:MAX_LISTED],
        "error_rows": errors[:MAX_LISTED],
    }
