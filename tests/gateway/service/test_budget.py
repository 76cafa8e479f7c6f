"""The pure parts of budgeted best-of-N: Spearman's rank correlation, the calibration rule that keeps or drops
early-rejection checkpoints per reward model, and the order of finished, rejected and failed candidates."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.criteria import Scored
from gateway.formats import spearman
from gateway.service.budget import Calibration, MeasuredSetting, RejectionPlan
from gateway.service.budget import budget_order as order
from gateway.service.handoffs import EarlyRejection
from gateway.upstream.router import Candidate, CandidateError


@dataclass(frozen=True)
class Crit:
    slug: str
    version: str | None = "v1"
    kind: str = "reward_model"


def test_spearman_of_monotone_reversed_and_tied_samples() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # ties share their mean rank
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    with pytest.raises(ValueError, match="pairs"):
        spearman([1, 2], [1])


def test_calibration_keeps_the_checkpoints_every_calibrated_criterion_predicts() -> None:
    calibration = Calibration({"rm@v1": {16: 0.2, 64: 0.8}, "other": {8: 0.9}}, min_rank_correlation=0.5)
    both = [(Crit("rm"), 1.0), (Crit("other", "v3"), 1.0)]
    assert calibration.checkpoints([16, 32, 64, 128], both) == ((64, 128), None)  # 32 reads the measure at 16
    kept, reason = calibration.checkpoints([4, 16], both)
    assert kept == ()
    assert reason is not None and "rm@v1 at 4 tokens: not measured this early" in reason
    assert "rm@v1 at 16 tokens: rank correlation 0.20" in reason
    # a criterion with no entry is trusted; a version without one reads the slug's entry when there is one
    assert calibration.checkpoints([16], [(Crit("judge"), 1.0)]) == ((16,), None)
    assert calibration.checkpoints([16], [(Crit("rm", "v2"), 1.0)]) == ((16,), None)


def test_plan_takes_the_one_measured_setting_of_the_request_else_its_own_or_the_default() -> None:
    measured = {"rm@v1": MeasuredSetting(2.0, (64, 128), 0.375), "other": MeasuredSetting(2.0)}
    calibration = Calibration({"rm@v1": {16: 0.2, 64: 0.8}}, 0.5, measured)
    rm, judge, other = (Crit("rm"), 1.0), (Crit("judge"), 1.0), (Crit("other", "v2"), 1.0)
    plan = calibration.plan(EarlyRejection(), [rm, judge])
    assert plan == RejectionPlan((64, 128), 0.375, 1, "calibration rm@v1")
    assert calibration.plan(EarlyRejection(), [other]) == (
        "calibration of other@v2: no early-rejection setting kept the pick's reward within 2 %"
    )
    # the request's own setting (the rest from the defaults), then the correlation floor: 16 and 32 are dropped
    assert calibration.plan(EarlyRejection(keep=0.25), [rm]) == RejectionPlan((64,), 0.25, 1, "request")
    # two measured criteria were never measured together: the defaults, under the floor
    assert calibration.plan(EarlyRejection(min_keep=2), [rm, other]) == RejectionPlan((64,), 0.5, 2, "default")
    assert calibration.plan(EarlyRejection(), [judge]) == RejectionPlan((16, 32, 64), 0.5, 1, "default")


def test_calibration_file_round_trip_and_refusal(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"criteria": {"rm@v1": {"checkpoints": {"16": 0.3, "32": None, "64": 0.7}}}}))
    loaded = Calibration.load(path, 0.6)
    assert loaded.correlations == {"rm@v1": {16: 0.3, 64: 0.7}} and loaded.min_rank_correlation == 0.6
    path.write_text(json.dumps({"criteria": {"rm@v1": [0.3]}}))
    with pytest.raises(ValueError, match="checkpoints"):
        Calibration.load(path, 0.5)
    measured = {"within_pct": 2, "setting": {"checkpoints": [32, 96], "keep": 0.5}}
    path.write_text(json.dumps({"criteria": {"rm": {"checkpoints": {}, "early_rejection": measured}}}))
    assert Calibration.load(path, 0.5).settings == {"rm": MeasuredSetting(2.0, (32, 96), 0.5)}
    settings = ({"checkpoints": [96, 32], "keep": 0.5}, {"checkpoints": [32], "keep": 0}, [32])
    for bad in ({"setting": None}, *({"within_pct": 2, "setting": setting} for setting in settings)):
        path.write_text(json.dumps({"criteria": {"rm": {"checkpoints": {}, "early_rejection": bad}}}))
        with pytest.raises(ValueError, match=r"criteria\['rm'\]\.early_rejection"):
            Calibration.load(path, 0.5)


def test_order_puts_finished_then_rejected_by_how_long_they_lasted_then_failed() -> None:
    def ok(i: int, reason: str = "stop") -> Candidate:
        return Candidate(i, {"index": i, "message": {}, "finish_reason": reason}, "m", None, 0.0)

    candidates = [ok(0, "rejected"), ok(1), CandidateError(2, "x", "x", 502, "m"), ok(3, "rejected"), ok(4)]
    scored = [Scored(0, 0.9, {}), Scored(1, 0.2, {}), Scored(2, None, {}, failed=True), Scored(3, 0.1, {})]
    scored.append(Scored(4, 0.6, {}))
    assert order(candidates, scored, {0: 16, 3: 32}) == (4, 1, 3, 0, 2)
