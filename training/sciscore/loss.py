"""SciScore's three-term preference loss (the paper's reward-model objective).

Each sample holds one implicit (IP), explicit (EP) and superficial (SP) prompt and one explicit
(I_exp) and superficial (I_sup) image. With s(t, I) = exp(logit_scale) * cos(t, I):

- implicit-prompt term:    CE([s(IP, I_exp), s(IP, I_sup)], target 0)
- explicit-image term:     CE([s(EP, I_exp), s(SP, I_exp)], target 0)
- superficial-image term:  CE([s(EP, I_sup), s(SP, I_sup)], target 1)

loss = implicit + lambda * (explicit-image + superficial-image), summed over the batch. Only
the sample's own prompts and images are compared (no in-batch negatives), so each term is a
two-way choice and the per-sample losses are independent of the batch composition.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...nodes.errors import ScienceT2IError

DEFAULT_LAMBDA = 0.25


@dataclass
class SciScoreLoss:
    """The summed loss to backpropagate and its per-sample parts (for logging)."""
    loss: torch.Tensor                 # scalar: sum over the batch
    implicit: torch.Tensor             # [B] implicit-prompt term
    explicit_image: torch.Tensor       # [B] explicit-image term
    superficial_image: torch.Tensor    # [B] superficial-image term
    implicit_correct: torch.Tensor     # [B] bool: s(IP, I_exp) > s(IP, I_sup)

    def metrics(self) -> dict[str, float]:
        """Batch means, as plain floats."""
        n = max(1, self.implicit.shape[0])
        return {
            "loss": float(self.loss.detach()) / n,
            "loss_implicit": float(self.implicit.detach().mean()),
            "loss_explicit_image": float(self.explicit_image.detach().mean()),
            "loss_superficial_image": float(self.superficial_image.detach().mean()),
            "train_accuracy": float(self.implicit_correct.float().mean()),
        }


def paired_scores(text: torch.Tensor, image: torch.Tensor,
                  logit_scale_exp: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) * cos(text_i, image_i) for each row i (embeddings already normalised)."""
    return logit_scale_exp * (text * image).sum(dim=-1)


def _two_way_ce(first: torch.Tensor, second: torch.Tensor, target: int) -> torch.Tensor:
    logits = torch.stack([first, second], dim=-1)
    labels = torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels, reduction="none")


def sciscore_loss(implicit_text: torch.Tensor, explicit_text: torch.Tensor,
                  superficial_text: torch.Tensor, explicit_image: torch.Tensor,
                  superficial_image: torch.Tensor, logit_scale: torch.Tensor,
                  lambda_: float = DEFAULT_LAMBDA) -> SciScoreLoss:
    """The paper's loss from projected embeddings ([B, D] each, any scale: normalised here).

    ``logit_scale`` is the model's (log-space) parameter; its exponential scales the cosines,
    so it is trained along with the towers.
    """
    feats = [implicit_text, explicit_text, superficial_text, explicit_image, superficial_image]
    shapes = {tuple(f.shape) for f in feats}
    if len(shapes) != 1 or feats[0].dim() != 2 or feats[0].shape[0] == 0:
        raise ScienceT2IError(
            "sciscore_loss needs five non-empty [batch, dim] embedding tensors of one shape "
            f"(implicit, explicit, superficial prompts; explicit, superficial images); got "
            f"shapes {[tuple(f.shape) for f in feats]}.")
    # Compute in float32 even under bf16 autocast: the two-way softmax of large scaled
    # logits loses precision otherwise.
    dtype = torch.promote_types(feats[0].dtype, torch.float32)
    ip, ep, sp, i_exp, i_sup = (F.normalize(f.to(dtype), dim=-1) for f in feats)
    scale = logit_scale.to(dtype).exp()

    s_ip_exp = paired_scores(ip, i_exp, scale)
    s_ip_sup = paired_scores(ip, i_sup, scale)
    implicit = _two_way_ce(s_ip_exp, s_ip_sup, 0)
    explicit_img = _two_way_ce(paired_scores(ep, i_exp, scale), paired_scores(sp, i_exp, scale), 0)
    superficial_img = _two_way_ce(paired_scores(ep, i_sup, scale),
                                  paired_scores(sp, i_sup, scale), 1)
    total = implicit + lambda_ * (explicit_img + superficial_img)
    return SciScoreLoss(loss=total.sum(), implicit=implicit, explicit_image=explicit_img,
                        superficial_image=superficial_img,
                        implicit_correct=(s_ip_exp > s_ip_sup).detach())
