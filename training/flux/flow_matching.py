"""Rectified-flow training maths for FLUX: noise levels, noisy inputs, targets, loss.

With x0 the (scaled) VAE latent, noise ~ N(0, I) and sigma in (0, 1):
    x_t = (1 - sigma) x0 + sigma * noise,   target velocity = noise - x0,
and the transformer, given x_t and timestep = sigma, is trained by mean squared error against
the target. Latent packing (2x2 patches) and the positional image ids are the sampler's
(``sampler``), so training and sampling cannot disagree on the layout.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from ...nodes.errors import ScienceT2IError

SIGMA_SAMPLERS = ("uniform", "logit_normal", "mode", "discrete")


def discrete_levels(num_train_timesteps: int = 1000, shift: float = 1.0,
                    use_dynamic_shifting: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The training table of diffusers' FlowMatchEulerDiscreteScheduler, as the reference SFT
    samples it: (sigmas, timesteps) float32, from 1 down to 1/num. FLUX shifts its schedule by
    resolution only when sampling (``use_dynamic_shifting``), so this table is unshifted; a
    static ``shift`` applies sigma' = shift sigma / (1 + (shift - 1) sigma)."""
    import numpy as np
    t = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    sigmas = torch.from_numpy(t) / num_train_timesteps
    if not use_dynamic_shifting:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas, sigmas * num_train_timesteps


def sample_sigmas(n: int, kind: Literal["uniform", "logit_normal", "mode"] = "uniform", *,
                  logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` noise levels in (0, 1), float32 on the generator's device (CPU by default).

    - uniform: sigma ~ U(0, 1);
    - discrete: a uniform index into ``discrete_levels`` (see ``sample_discrete``);
    - logit_normal: sigma = sigmoid(z), z ~ N(logit_mean, logit_std^2) (SD3);
    - mode: sigma = 1 - u - s (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1) (SD3's mode sampling,
      s = ``mode_scale``; s = 0 is uniform, larger s puts more mass at mid noise).
    The continuous draws are diffusers' own (``compute_density_for_timestep_sampling``).
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling
    device = generator.device if generator is not None else "cpu"
    if kind == "discrete":
        return sample_discrete(n, generator=generator)[0].to(device)
    if kind not in ("uniform", "logit_normal", "mode"):
        raise ScienceT2IError(f"unknown timestep sampler {kind!r}; use one of "
                              f"{', '.join(SIGMA_SAMPLERS)}.")
    if kind == "mode" and not -1.0 <= mode_scale <= 2.0 / (math.pi - 2.0):
        # outside this range the map is not monotone and leaves [0, 1]
        raise ScienceT2IError(f"mode_scale must be in [-1, {2 / (math.pi - 2):.3f}]; got "
                              f"{mode_scale}.")
    # diffusers draws U(0, 1) for any scheme it does not name ("uniform" here)
    u = compute_density_for_timestep_sampling(kind, n, logit_mean=logit_mean,
                                              logit_std=logit_std, mode_scale=mode_scale,
                                              device=device, generator=generator)
    # keep strictly inside (0, 1): sigma = 0 or 1 gives a degenerate (pure data/noise) input
    return u.clamp(1e-5, 1 - 1e-5)


def sample_discrete(n: int, levels: tuple[torch.Tensor, torch.Tensor] | None = None,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, transformer timestep) of ``n`` draws as the reference SFT makes them: index
    floor(u * N), u ~ U(0, 1), into the table; the timestep the model sees is the table's
    timestep / 1000 (in float32 not always bit-equal to sigma)."""
    sigmas, timesteps = levels if levels is not None else discrete_levels()
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, generator=generator, device=device).cpu()
    idx = (u * len(sigmas)).long()
    return sigmas[idx], timesteps[idx] / 1000


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma * noise, sigma of shape [B] broadcast over the rest."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity d x_t / d sigma = noise - x0."""
    return noise - x0


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, then over the batch (computed in float32)."""
    err = (pred.float() - target.float()) ** 2
    return err.reshape(err.shape[0], -1).mean(dim=1).mean()


def text_ids(seq_len: int, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FLUX positional ids of the T5 tokens: all zeros, [seq_len, 3]."""
    return torch.zeros(seq_len, 3, device=device, dtype=dtype)
