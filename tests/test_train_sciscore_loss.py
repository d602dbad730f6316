"""The SciScore loss against the paper's formula written out by hand on fixed embeddings."""
from __future__ import annotations

import math

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.sciscore.loss import sciscore_loss


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _cos(a: list[float], b: list[float]) -> float:
    a, b = _unit(a), _unit(b)
    return sum(x * y for x, y in zip(a, b))


def _neg_log_softmax(logits: list[float], target: int) -> float:
    # -log softmax(logits)[target] = log(sum exp(l)) - l[target], written out
    m = max(logits)
    log_z = m + math.log(sum(math.exp(x - m) for x in logits))
    return log_z - logits[target]


# Two samples, 3-d embeddings chosen by hand (not unit length: the loss must normalise them).
IP = [[1.0, 0.2, 0.0], [0.3, -1.0, 0.5]]
EP = [[0.9, 0.1, 0.4], [0.0, -0.8, 1.2]]
SP = [[-0.2, 1.0, 0.3], [1.1, 0.4, -0.2]]
IMG_EXP = [[1.0, 0.0, 0.5], [0.2, -0.9, 0.9]]
IMG_SUP = [[0.1, 1.0, 0.0], [1.0, 0.5, 0.1]]
LOG_SCALE = math.log(7.5)


def _by_hand(lam: float):
    scale = math.exp(LOG_SCALE)
    terms = []
    for b in range(2):
        s = lambda t, i: scale * _cos(t, i)  # noqa: E731
        implicit = _neg_log_softmax([s(IP[b], IMG_EXP[b]), s(IP[b], IMG_SUP[b])], 0)
        exp_img = _neg_log_softmax([s(EP[b], IMG_EXP[b]), s(SP[b], IMG_EXP[b])], 0)
        sup_img = _neg_log_softmax([s(EP[b], IMG_SUP[b]), s(SP[b], IMG_SUP[b])], 1)
        terms.append((implicit, exp_img, sup_img, implicit + lam * (exp_img + sup_img)))
    return terms


def _call(lam: float):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return sciscore_loss(t(IP), t(EP), t(SP), t(IMG_EXP), t(IMG_SUP),
                         torch.tensor(LOG_SCALE, dtype=torch.float64), lambda_=lam)


@pytest.mark.parametrize("lam", [0.25, 0.0, 1.7])
def test_each_term_and_lambda_match_hand_computation(lam):
    out = _call(lam)
    hand = _by_hand(lam)
    for b in range(2):
        assert out.implicit[b].item() == pytest.approx(hand[b][0], rel=1e-5)
        assert out.explicit_image[b].item() == pytest.approx(hand[b][1], rel=1e-5)
        assert out.superficial_image[b].item() == pytest.approx(hand[b][2], rel=1e-5)
    # summed over the batch, not averaged
    assert out.loss.item() == pytest.approx(hand[0][3] + hand[1][3], rel=1e-5)


def test_implicit_accuracy_flag_and_gradients_reach_logit_scale():
    scale = torch.tensor(LOG_SCALE, requires_grad=True)
    feats = [torch.tensor(x, requires_grad=True) for x in (IP, EP, SP, IMG_EXP, IMG_SUP)]
    out = sciscore_loss(*feats, scale)
    out.loss.backward()
    assert scale.grad is not None and scale.grad.abs().item() > 0
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    expected = [_cos(IP[b], IMG_EXP[b]) > _cos(IP[b], IMG_SUP[b]) for b in range(2)]
    assert out.implicit_correct.tolist() == expected


def test_shape_mismatch_is_a_clear_error():
    a = torch.randn(2, 3)
    with pytest.raises(ScienceT2IError, match="five non-empty"):
        sciscore_loss(a, a, a, a, torch.randn(3, 3), torch.tensor(0.0))
