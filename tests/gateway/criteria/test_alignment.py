"""gateway/criteria/alignment.py as pure code: the labelled-set reader (every bad line reported with its field),
the report's arithmetic and edge cases, and score_rows turning a criterion's failure into error results."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from gateway.criteria import CriterionResult
from gateway.criteria.alignment import LabelledSetError, alignment_report, parse_labelled_set, score_rows
from gateway.formats import Message

ROW = {"input": [{"role": "user", "content": "hi"}], "output": "hello", "label": "PASS"}


def lines(*rows: object) -> list[str]:
    return [json.dumps(r) if not isinstance(r, str) else r for r in rows]


def test_reader_accepts_its_shapes_and_reports_every_bad_line() -> None:
    rows = parse_labelled_set(
        lines(
            ROW,
            {**ROW, "id": "x", "label": "fail"},
            "",
            {"messages": ROW["input"], "output": ROW["output"], "label": True},
        )
    )
    assert [(r.id, r.passed) for r in rows] == [("line-1", True), ("x", False), ("line-4", True)]
    assert rows[0].output == Message("assistant", "hello")
    with pytest.raises(LabelledSetError) as caught:
        parse_labelled_set(
            lines(
                ROW,
                "{bad",
                {**ROW, "label": "MAYBE"},
                {**ROW, "input": []},
                {**ROW, "output": {"role": "user", "content": "x"}},
            )
        )
    assert [str(e) for e in caught.value.errors] == [
        "line 2: invalid JSON",
        "line 3: label: expected 'PASS' or 'FAIL', got 'MAYBE'",
        "line 4: input: missing or empty message list",
        "line 5: output: must be an assistant message, got role 'user'",
    ]
    with pytest.raises(LabelledSetError, match="empty"):
        parse_labelled_set(["", "  "])


def ok(normalized: float) -> CriterionResult:
    return CriterionResult.success(normalized, version="v1", explanation=f"s={normalized}")


def test_report_counts_thresholds_and_leaves_errors_out() -> None:
    rows = parse_labelled_set(lines(*({**ROW, "label": label} for label in ["PASS", "PASS", "FAIL", "FAIL", "PASS"])))
    results = [ok(0.9), ok(0.5), ok(0.49), ok(0.7), CriterionResult.error("timeout", "slow", version="v1")]
    report = alignment_report(rows, results)
    assert report["confusion"] == {"tp": 2, "fp": 1, "tn": 1, "fn": 0}  # 0.5 is PASS at threshold 0.5
    assert (report["precision"], report["recall"], report["accuracy"]) == (2 / 3, 1.0, 0.75)
    assert report["f1"] == pytest.approx(0.8)
    assert report["errored"] == 1 and report["error_rows"][0]["errorCode"] == "timeout"
    assert [d["id"] for d in report["disagreement_rows"]] == ["line-4"]
    strict = alignment_report(rows, results, threshold=0.95)
    assert strict["confusion"] == {"tp": 0, "fp": 0, "tn": 2, "fn": 2}
    assert strict["precision"] is None and strict["recall"] == 0.0 and strict["f1"] is None
    with pytest.raises(ValueError, match="5 rows but 1 results"):
        alignment_report(rows, results[:1])


@pytest.mark.anyio
async def test_score_rows_reports_a_criterion_failure_per_row() -> None:
    class Flaky:
        slug, version, kind = "flaky", "v1", "rule"

        async def score(self, prompt: Sequence[Message], candidates: Sequence[Message]) -> list[CriterionResult]:
            if "boom" in candidates[0].content:
                raise RuntimeError("bug")
            return [ok(1.0)]

    rows = parse_labelled_set(lines(ROW, {**ROW, "output": "boom"}))
    first, second = await score_rows(Flaky(), rows)
    assert first.ok and not second.ok and second.error_code == "criterion_error"
