"""trainer/evaluate.py's metrics of rated responses, pure (no model): ranks with ties, Pearson, Spearman, the
Mann-Whitney AUC, the PASS/FAIL agreement on the rewards' scale, and a model card's target mapping."""

from __future__ import annotations

import math

import pytest

from gateway.formats import Message, RatedResponse
from trainer.evaluate import pearson, ranks, rated_metrics, roc_auc, spearman, target_mapping
from trainer.objective import Pointwise


def rated(reward: float, answer: str = "an answer") -> RatedResponse:
    return RatedResponse((Message("user", "q"),), Message("assistant", answer), reward, "TEST")


def test_ranks_average_ties() -> None:
    assert ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]
    assert ranks([]) == []


def test_pearson_and_spearman() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and pearson([1], [2]) is None
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0


def test_auc_is_the_share_of_1_0_pairs_ordered_right_ties_half() -> None:
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.9], [1, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2], [1, 1]) is None


def test_rated_metrics_map_scores_onto_the_rewards_scale() -> None:
    rows = [rated(0.9, "long answer here"), rated(0.2, "no"), rated(0.7, "medium one"), rated(0.4, "meh")]
    objective = Pointwise("regression", 0.5, 0.25)
    scores = [1.6, -1.2, 0.8, -0.4]  # -> 0.9, 0.2, 0.7, 0.4 exactly
    m = rated_metrics(rows, scores, objective.to_target, threshold=0.5)
    assert m.count == 4 and m.pearson == pytest.approx(1.0) and m.spearman == pytest.approx(1.0)
    assert m.rmse == pytest.approx(0.0, abs=1e-12) and m.pass_accuracy == 1.0 and m.auc is None
    assert m.length_spearman == pytest.approx(1.0) and m.scored == 4 and sum(m.histogram()["counts"]) == 4  # type: ignore[index,arg-type]
    off = rated_metrics(rows, [-1.6, 1.2, 0.8, -0.4], objective.to_target, threshold=0.5)
    assert off.pass_accuracy == 0.5 and off.spearman == pytest.approx(-0.8)
    thumbs = rated_metrics([rated(1.0), rated(0.0)], [0.3, -0.3], Pointwise("binary_cross_entropy").to_target, 0.5)
    assert thumbs.auc == 1.0 and thumbs.pass_accuracy == 1.0
    assert rated_metrics(rows, scores, objective.to_target, threshold=3.0).pass_accuracy is None  # all on one side
    empty = rated_metrics([], [], objective.to_target, 0.5)
    assert empty.count == 0 and empty.to_dict()["pearson"] is None


def test_target_mapping_uses_the_cards_objective_else_the_gateways_normalized_score() -> None:
    card = {"objective": {"data": "rated", "loss": "regression", "target_mean": 3.0, "target_std": 2.0}}
    assert target_mapping(card)(1.0) == 5.0
    trained_on_pairs = {"objective": {"data": "pairs"}, "reward_stats": {"mean": 1.0, "std": 2.0}}
    assert target_mapping(trained_on_pairs)(1.0) == 0.5
    assert target_mapping(trained_on_pairs)(3.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert target_mapping({})(0.0) == 0.5  # no stats: mean 0, std 1 (as the gateway falls back)
