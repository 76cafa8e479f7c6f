"""The optimizer step: clipped AdamW, and bf16 weights stepped through their fp32 master copies."""

from __future__ import annotations

import torch

from trainer.optimizer import MAX_GRAD_NORM, Weights, adamw, copy_master_to_params, optimizer_step, trainable_weights


def linear(dtype: torch.dtype = torch.float32) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).to(dtype)


def test_without_master_copies_the_step_is_adamw_after_clipping_at_the_lr_given() -> None:
    ours, reference = linear(), linear()
    weights = trainable_weights(ours, master_copies=False)
    optimizer = adamw(weights, learning_rate=1.0, weight_decay=0.01)
    expected = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.01)
    for model in (ours, reference):
        model(torch.full((2, 4), 10.0)).sum().backward()  # a gradient far over the clipping norm
    torch.nn.utils.clip_grad_norm_(reference.parameters(), MAX_GRAD_NORM)
    expected.step()

    optimizer_step(optimizer, weights, lr=0.05)
    assert optimizer.param_groups[0]["lr"] == 0.05
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b) and a.grad is None  # stepped, and the gradients cleared for the next step


def test_bf16_weights_keep_updates_too_small_for_bf16_in_their_master_copies() -> None:
    model = linear(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)  # bf16's spacing at 1.0 is 2**-7: an update of 1e-4 rounds away
    weights = trainable_weights(model, master_copies=True)
    assert weights.master is not None and all(m.dtype == torch.float32 for m in weights.master)
    optimizer = adamw(weights, learning_rate=1e-4, weight_decay=0.0)
    for _ in range(3):
        model(torch.ones(1, 4, dtype=torch.bfloat16)).sum().backward()
        optimizer_step(optimizer, weights, lr=1e-4)
    master_weight = weights.master[0]
    assert float(master_weight.max()) < 1.0 - 2e-4  # three updates of ~1e-4 each, kept in fp32
    assert torch.equal(model.weight, master_weight.to(torch.bfloat16))  # the model holds their rounding
    assert all(p.grad is None for p in model.parameters()) and all(m.grad is None for m in weights.master)


def test_frozen_parameters_are_left_out() -> None:
    model = linear()
    model.bias.requires_grad_(False)
    weights = trainable_weights(model, master_copies=False)
    assert weights.params == [model.weight] and weights.stepped == [model.weight]


def test_copy_master_to_params_writes_the_master_values_and_is_a_no_op_without_them() -> None:
    model = linear()
    before = model.weight.detach().clone()
    copy_master_to_params(Weights(list(model.parameters())))
    assert torch.equal(model.weight, before)
    weights = trainable_weights(model, master_copies=True)
    assert weights.master is not None
    weights.master[0].add_(1.0)
    copy_master_to_params(weights)
    assert torch.equal(model.weight, before + 1.0)
