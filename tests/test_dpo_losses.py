"""Stage-2 objectives against hand computations, and pair selection."""
from __future__ import annotations

import math

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.stage2.losses import (flow_dpo_loss, flow_matching_inputs, masked_mse,
                                                oft_loss, select_pairs)


def _logsig(z: float) -> float:
    return -math.log(1 + math.exp(-z))


def test_oft_loss_equals_a_hand_computation():
    lp_w = torch.tensor([-1.00, -2.00])
    ref_w = torch.tensor([-1.05, -2.00])
    lp_l = torch.tensor([-0.50, -3.30])
    ref_l = torch.tensor([-0.52, -3.00])
    got = oft_loss(lp_w, ref_w, lp_l, ref_l, eps=0.1, beta=10.0)
    # pair 0: exp(0.05)=1.0513 -> in [0.9, 1.1]; exp(0.02)=1.0202 -> in range
    r_w0, r_l0 = 0.05, 0.02
    # pair 1: exp(0)=1 -> 0; exp(-0.3)=0.7408 -> clamped to 0.9
    r_w1, r_l1 = 0.0, math.log(0.9)
    expected = -(_logsig(10 * (r_w0 - r_l0)) + _logsig(10 * (r_w1 - r_l1))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_oft_gradient_stops_outside_the_clamp_and_flows_inside():
    lp_w = torch.tensor([0.5, 0.01], requires_grad=True)
    lp_l = torch.tensor([0.0, 0.0], requires_grad=True)
    zero = torch.zeros(2)
    oft_loss(lp_w, zero, lp_l, zero).backward()
    assert lp_w.grad[0] == 0  # exp(0.5) = 1.65 is clamped to 1.1: no gradient (as the paper's loss)
    assert lp_w.grad[1] < 0   # inside the trust region raising the winner's log-prob lowers the loss


def test_flow_dpo_loss_equals_a_hand_computation():
    # one pair, 1 channel, 1x2 "latents"
    target_w = torch.tensor([[[[1.0, 2.0]]]])
    target_l = torch.tensor([[[[0.0, -1.0]]]])
    pred_w = torch.tensor([[[[1.5, 2.0]]]])      # err_w = (0.25 + 0) / 2 = 0.125
    ref_w = torch.tensor([[[[2.0, 2.0]]]])       # ref_w = 1 / 2 = 0.5
    pred_l = torch.tensor([[[[0.0, 0.0]]]])      # err_l = 1 / 2 = 0.5
    ref_l = torch.tensor([[[[0.0, -1.5]]]])      # ref_l = 0.25 / 2 = 0.125
    loss, stats = flow_dpo_loss(pred_w, ref_w, target_w, pred_l, ref_l, target_l, beta=4.0)
    inside = -0.5 * 4.0 * ((0.125 - 0.5) - (0.5 - 0.125))
    assert loss.item() == pytest.approx(-_logsig(inside), rel=1e-6)
    assert stats["implicit_acc"] == 1.0


def test_flow_dpo_mask_normalises_by_the_mask_sum():
    target = torch.zeros(1, 2, 2, 2)
    pred = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # left column, broadcast over 2 channels
    # squared errors inside: channel 0 -> 0, 4 ; channel 1 -> 16, 36 ; 4 masked elements
    assert masked_mse(pred, target, mask).item() == pytest.approx((0 + 4 + 16 + 36) / 4)
    assert masked_mse(pred, target).item() == pytest.approx(sum(i * i for i in range(8)) / 8)
    with pytest.raises(ScienceT2IError, match="mask is empty"):
        masked_mse(pred, target, torch.zeros(1, 1, 2, 2))


def test_masked_flow_dpo_gradients_vanish_outside_the_mask():
    torch.manual_seed(0)
    shape = (3, 4, 6, 6)
    pred_w = torch.randn(shape, requires_grad=True)
    pred_l = torch.randn(shape, requires_grad=True)
    mask_w = torch.zeros(3, 1, 6, 6)
    mask_w[:, :, 1:4, 2:5] = 1
    mask_l = torch.zeros(3, 1, 6, 6)
    mask_l[:, :, 0:3, 0:6] = 1
    loss, _ = flow_dpo_loss(pred_w, torch.randn(shape), torch.randn(shape),
                            pred_l, torch.randn(shape), torch.randn(shape), beta=50.0,
                            mask_win=mask_w, mask_lose=mask_l)
    loss.backward()
    outside_w = (1 - mask_w).expand(shape).bool()
    outside_l = (1 - mask_l).expand(shape).bool()
    assert torch.all(pred_w.grad[outside_w] == 0) and torch.all(pred_l.grad[outside_l] == 0)
    assert pred_w.grad[~outside_w].abs().sum() > 0 and pred_l.grad[~outside_l].abs().sum() > 0


def test_flow_matching_inputs_interpolate_and_target_the_velocity():
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sigma = torch.tensor([0.25, 1.0])
    xt, target = flow_matching_inputs(x0, noise, sigma)
    assert torch.allclose(xt[0], 0.75 * x0[0] + 0.25 * noise[0])
    assert torch.allclose(xt[1], noise[1])
    assert torch.allclose(target, noise - x0)


def test_pairs_are_best_versus_worst_and_ties_are_dropped():
    rewards = torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.4, 0.4], [3.0, 1.0, 2.0]])
    pairs = select_pairs(rewards)
    assert [(p.prompt_index, p.win, p.lose) for p in pairs] == [(0, 1, 0), (2, 0, 1)]
    assert pairs[0].reward_gap == pytest.approx(0.7)
    with pytest.raises(ScienceT2IError, match="samples_per_prompt"):
        select_pairs(torch.ones(3, 1))
