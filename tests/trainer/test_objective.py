from __future__ import annotations

import math

import pytest
import torch

from trainer.objective import (
    Pairwise,
    Pointwise,
    Schedule,
    batch_correlation,
    binary_loss,
    bradley_terry_loss,
    lr_multiplier,
    pointwise_objective,
    regression_loss,
)


def test_loss_is_mean_negative_log_sigmoid_of_the_gap() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert stats["accuracy"] == 0.5
    assert stats["margin"] == pytest.approx(0.0)
    assert stats["reward_mean"] == pytest.approx(1.0)


def test_margin_raises_the_bar_for_the_chosen_answer() -> None:
    chosen, rejected = torch.tensor([1.0]), torch.tensor([0.0])
    plain, _ = bradley_terry_loss(chosen, rejected)
    with_margin, _ = bradley_terry_loss(chosen, rejected, torch.tensor([1.0]))
    assert float(with_margin) == pytest.approx(math.log(2.0), rel=1e-6)  # gap - margin == 0
    assert float(with_margin) > float(plain)


def test_centring_penalises_rewards_away_from_zero() -> None:
    chosen, rejected = torch.tensor([5.0]), torch.tensor([4.0])
    plain, _ = bradley_terry_loss(chosen, rejected)
    centred, _ = bradley_terry_loss(chosen, rejected, center_coef=0.01)
    assert float(centred) - float(plain) == pytest.approx(0.01 * 81.0, rel=1e-5)


def test_loss_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert float(chosen.grad) < 0 < float(rejected.grad)


def test_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    assert lr_multiplier(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 0, "constant") == 1.0
    values = [lr_multiplier(s, 50, 5, "cosine") for s in range(5, 50)]
    assert values == sorted(values, reverse=True)


def test_a_planned_schedule_runs_the_whole_run() -> None:
    schedule = Schedule.planned(2e-3, "cosine", 100, 0.05)
    assert (schedule.planned_steps, schedule.total_steps, schedule.warmup_steps) == (100, 100, 5)
    assert schedule.lr(50) == 2e-3 * lr_multiplier(50, 100, 5, "cosine")
    assert not schedule.stops_early(100, 1e9)  # no budget: the planned end is no early stop


def test_a_time_budget_fits_the_schedule_to_the_steps_that_fit() -> None:
    schedule = Schedule.planned(1.0, "cosine", 1000, 0.05, budget_s=12.0)
    fitted = schedule.fitted(step=8, steps_run=8, elapsed_s=2.0)  # 0.25 s a step, 10 s left: 40 more steps
    assert (fitted.total_steps, fitted.warmup_steps, fitted.planned_steps) == (48, 2, 1000)
    assert fitted.lr(47) < 0.01  # the decay completes inside the budget
    resumed = schedule.fitted(step=100, steps_run=8, elapsed_s=2.0)  # a resumed run times its own steps
    assert resumed.total_steps == 140 and resumed.warmup_steps == 7
    assert Schedule.planned(1.0, "cosine", 20, 0.05, 12.0).fitted(8, 8, 2.0).total_steps == 20  # never past plan
    assert schedule.fitted(8, 8, 20.0).total_steps == 8  # over budget already: the schedule ends now


def test_a_time_budget_stops_the_run_early_when_spent_or_when_the_fitted_schedule_ends() -> None:
    fitted = Schedule.planned(1.0, "cosine", 1000, 0.05, budget_s=12.0).fitted(8, 8, 2.0)
    assert not fitted.stops_early(20, 5.0)
    assert fitted.stops_early(20, 12.5)  # the budget is spent
    assert fitted.stops_early(48, 11.0)  # the fitted schedule has ended
    end = Schedule.planned(1.0, "cosine", 48, 0.05, budget_s=12.0)
    assert not end.stops_early(48, 13.0)  # the planned end is reached: not an early stop


# ---------------------------------------------------------------- rated responses (pointwise)


def test_regression_loss_is_the_weighted_mean_squared_error() -> None:
    rewards, targets = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    loss, stats = regression_loss(rewards, targets)
    assert float(loss) == pytest.approx((1.0 + 4.0) / 2)
    weighted, _ = regression_loss(rewards, targets, torch.tensor([2.0, 0.5]))
    assert float(weighted) == pytest.approx((2.0 * 1.0 + 0.5 * 4.0) / 2)  # a weight multiplies its row's loss
    assert stats["rmse"] == pytest.approx(math.sqrt(2.5)) and stats["reward_mean"] == 0.0


def test_binary_loss_is_cross_entropy_with_the_reward_as_the_logit() -> None:
    rewards, labels = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.0])
    loss, stats = binary_loss(rewards, labels)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6) and stats["accuracy"] == 0.5
    up = torch.tensor([0.0], requires_grad=True)
    binary_loss(up, torch.tensor([1.0]))[0].backward()
    assert up.grad is not None and float(up.grad) < 0  # a 1-label pushes its reward up


def test_the_data_chooses_the_loss() -> None:
    thumbs = pointwise_objective([1.0, 0.0, 1.0])
    assert thumbs.loss_name == "binary_cross_entropy" and thumbs.target(1.0) == 1.0
    assert thumbs.to_target(0.0) == 0.5 and thumbs.to_target(-1000.0) == 0.0
    stars = pointwise_objective([1.0, 3.0, 5.0])
    assert stars.loss_name == "regression" and stars.target_mean == 3.0
    assert stars.target(5.0) == pytest.approx(2.0 / stars.target_std) and stars.to_target(stars.target(4.0)) == 4.0
    assert pointwise_objective([2.0, 2.0]).target_std == 1.0  # a constant reward is centred only
    assert "0 or 1" in thumbs.describe() and "standardized" in stars.describe()
    assert stars.to_dict()["loss"] == "regression" and thumbs.to_dict()["data"] == "rated"
    with pytest.raises(ValueError):
        pointwise_objective([])


def test_each_objective_reads_its_own_batch() -> None:
    pairwise = Pairwise()
    rewards = torch.tensor([2.0, 1.0, 0.0, 1.0])  # chosen rows, then rejected rows
    loss, stats = pairwise.loss(rewards, {"margin": torch.zeros(2)})
    assert stats["accuracy"] == 0.5 and float(loss) == float(bradley_terry_loss(rewards[:2], rewards[2:])[0])
    batch = {"target": torch.tensor([1.0, 0.0, 1.0, 0.0]), "weight": torch.ones(4)}
    assert Pointwise("binary_cross_entropy").loss(rewards, batch)[1]["accuracy"] == 0.25
    assert "rmse" in Pointwise("regression").loss(rewards, batch)[1]


def test_the_length_debiased_objective_fits_the_sum_and_splits_length_from_quality() -> None:
    # Four pairs (chosen rows, then rejected rows); column 0 quality, column 1 length.
    lengths = torch.tensor([400.0, 300.0, 800.0, 250.0, 100.0, 90.0, 200.0, 60.0])
    log_length = lengths.log1p()
    follows_length = torch.stack([log_length, torch.zeros(8)], dim=1)  # the quality head only tracks length
    split = torch.stack([torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), log_length], dim=1)
    batch = {"margin": torch.zeros(4), "length": lengths}
    biased, stats = Pairwise(length_debiased=True).loss(follows_length, batch)
    clean, clean_stats = Pairwise(length_debiased=True).loss(split, batch)
    # the correlations are over the pairs' gaps (chosen - rejected), quality's and length's
    assert stats["quality_length_corr"] == pytest.approx(1.0, abs=1e-4) and stats["length_head_corr"] == 0.0
    assert clean_stats["length_head_corr"] == pytest.approx(1.0, abs=1e-4)
    assert abs(clean_stats["quality_length_corr"]) < 0.1 and float(clean) < float(biased)
    # the Bradley-Terry part is on the sum of the heads; quality_accuracy reads the quality head alone
    total = split.sum(dim=1)
    bt = float(bradley_terry_loss(total[:4], total[4:])[0])
    assert float(clean) == pytest.approx(bt + abs(clean_stats["quality_length_corr"]))
    assert clean_stats["quality_accuracy"] == 0.25
    grads = split.clone().requires_grad_(True)
    Pairwise(length_debiased=True).loss(grads, batch)[0].backward()
    assert grads.grad is not None and float(grads.grad[:, 1].abs().sum()) > 0
    assert Pairwise(length_debiased=True).outputs == 2 and Pairwise().outputs == 1
    assert Pairwise(length_debiased=True).to_dict()["length_debiased"] is True


def test_batch_correlation_is_pearson_and_zero_for_a_constant() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(batch_correlation(x, 2 * x + 1)) == pytest.approx(1.0, abs=1e-5)
    assert float(batch_correlation(x, -x)) == pytest.approx(-1.0, abs=1e-5)
    assert float(batch_correlation(x, torch.ones(4))) == 0.0
