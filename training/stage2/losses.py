"""Preference objectives for stage 2 and the pairing of rollouts by reward.

- ``oft_loss`` (the paper): per-timestep log-prob ratio against the reference policy,
  ratio = log(clamp(exp(logp - logp_ref), 1 - eps, 1 + eps)),
  loss = -log sigmoid(beta (ratio_win - ratio_lose)).
- ``flow_dpo_loss``: Diffusion-DPO for rectified flow on final images; win and lose share noise
  and timestep; loss = -log sigmoid(-0.5 beta ((err_w - ref_w) - (err_l - ref_l))), the squared
  flow-matching error masked and normalised by the mask sum.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...nodes.errors import ScienceT2IError

OBJECTIVES = ("oft", "flow-dpo")


@dataclass(frozen=True)
class Pair:
    """Indices into one prompt's K rollouts: the best and the worst by reward."""
    prompt_index: int
    win: int
    lose: int
    reward_gap: float


def select_pairs(rewards: torch.Tensor, keep_ties: bool = False) -> list[Pair]:
    """Best vs worst reward per prompt (rows of ``rewards`` [P, K]); prompts whose best and worst
    rewards tie give no pair, or with ``keep_ties`` a pair of gap 0 (its loss has no
    gradient, but it counts in the step's mean, as in the reference implementation)."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ScienceT2IError(
            f"rewards must be [prompts, samples per prompt >= 2], got {tuple(rewards.shape)}; "
            "set samples_per_prompt to 2 or more.")
    pairs = []
    for p, row in enumerate(rewards.float()):
        win, lose = int(row.argmax()), int(row.argmin())
        gap = float(row[win] - row[lose])
        if gap > 0 or keep_ties:
            pairs.append(Pair(p, win, lose, max(gap, 0.0)))
    return pairs


def clamped_log_ratio(log_prob: torch.Tensor, log_prob_ref: torch.Tensor,
                      eps: float = 0.1) -> torch.Tensor:
    return torch.log(torch.clamp(torch.exp(log_prob - log_prob_ref), 1 - eps, 1 + eps))


def oft_loss(log_prob_win: torch.Tensor, log_prob_ref_win: torch.Tensor,
             log_prob_lose: torch.Tensor, log_prob_ref_lose: torch.Tensor, *,
             eps: float = 0.1, beta: float = 10.0, reduction: str = "mean") -> torch.Tensor:
    """The clamped-ratio DPO loss: its mean over pairs (and timesteps, if given as
    [pairs, T]), or with ``reduction="none"`` one value per entry."""
    ratio_w = clamped_log_ratio(log_prob_win, log_prob_ref_win.detach(), eps)
    ratio_l = clamped_log_ratio(log_prob_lose, log_prob_ref_lose.detach(), eps)
    loss = -F.logsigmoid(beta * (ratio_w - ratio_l))
    return loss.mean() if reduction == "mean" else loss


def masked_mse(pred: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample squared error [B], averaged over the mask's elements (all elements without one).
    ``mask`` broadcasts against ``pred`` (e.g. [B, 1, h, w] against [B, C, h, w])."""
    sq = (pred.float() - target.float()) ** 2
    if mask is None:
        return sq.flatten(1).mean(1)
    m = mask.to(sq.dtype).expand_as(sq)
    total = m.flatten(1).sum(1)
    if bool((total <= 0).any()):
        raise ScienceT2IError("a subject mask is empty; masks must cover at least one latent "
                              "element (the method falls back to the whole image, not to none).")
    return (sq * m).flatten(1).sum(1) / total


def flow_dpo_loss(pred_win: torch.Tensor, pred_ref_win: torch.Tensor, target_win: torch.Tensor,
                  pred_lose: torch.Tensor, pred_ref_lose: torch.Tensor, target_lose: torch.Tensor,
                  *, beta: float = 100.0, mask_win: torch.Tensor | None = None,
                  mask_lose: torch.Tensor | None = None,
                  reduction: str = "mean") -> tuple[torch.Tensor, dict]:
    """Flow-DPO loss (mean over pairs, or per pair with ``reduction="none"``) and diagnostics
    (implicit accuracy, error gaps; per pair with "none")."""
    err_w = masked_mse(pred_win, target_win, mask_win)
    err_l = masked_mse(pred_lose, target_lose, mask_lose)
    ref_w = masked_mse(pred_ref_win.detach(), target_win, mask_win)
    ref_l = masked_mse(pred_ref_lose.detach(), target_lose, mask_lose)
    inside = -0.5 * beta * ((err_w - ref_w) - (err_l - ref_l))
    loss = -F.logsigmoid(inside)
    with torch.no_grad():  # tensors: reading them is left to the caller (a device sync)
        stats = {"implicit_acc": (inside > 0).float(), "err_win": err_w, "err_lose": err_l}
    if reduction == "mean":
        return loss.mean(), {k: v.mean() for k, v in stats.items()}
    return loss, stats


def flow_matching_inputs(x0: torch.Tensor, noise: torch.Tensor,
                         sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow training pair: x_t = (1 - sigma) x0 + sigma noise, target = noise - x0.
    ``sigma`` is [B]; it broadcasts over the other dims."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, noise - x0
