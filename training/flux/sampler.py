"""Stochastic Euler sampling for FLUX that records each transition's Gaussian log-probability.

The step follows the Science-T2I reference sampler: with ``sigmas`` the scheduler's table
(length n + 1) and ``v`` the transformer's velocity at (x, sigma),

    gamma = min(churn / n, sqrt(2) - 1);  sigma_hat = sigma (1 + gamma)
    std   = s_noise * sqrt(sigma_hat^2 - sigma^2)
    delta = v + std^2 / (2 sigma) * (-x + (1 - sigma) v);  mean = x + (sigma_next - sigma) delta
    x_next = mean + std * noise

and log p(x_next) is the per-element Gaussian log-density under N(mean, std^2), optionally
multiplied by a 0/1 latent mask, then averaged over ALL elements of the sample (masked zeros
included, as the paper does). Latents are kept in FLUX's packed layout [B, seq, 4C]; masks are
given in the unpacked latent layout [B, 1|C, h, w] and packed the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

from ...nodes.errors import ScienceT2IError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class FluxConditioning:
    """Encoded prompts for the FLUX transformer (one row per sample)."""
    prompt_embeds: torch.Tensor      # [B, L, D] T5 tokens
    pooled_embeds: torch.Tensor      # [B, P] CLIP pooled
    text_ids: torch.Tensor           # [L, 3]

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> "FluxConditioning":
        index = torch.as_tensor(index, dtype=torch.long, device=self.prompt_embeds.device)
        return FluxConditioning(self.prompt_embeds[index], self.pooled_embeds[index], self.text_ids)

    def to(self, device: torch.device | str) -> "FluxConditioning":
        return FluxConditioning(self.prompt_embeds.to(device), self.pooled_embeds.to(device),
                                self.text_ids.to(device))


@dataclass
class Trajectory:
    """A sampled chain x_0 (noise) -> x_n (final latents), packed layout, float32 on CPU or device."""
    latents: torch.Tensor    # [B, n+1, seq, 4C]
    log_probs: torch.Tensor  # [B, n] (unmasked; recomputed with the mask for training)
    noise: torch.Tensor      # [B, n, seq, 4C] the Gaussian noise injected at each transition
    sigmas: torch.Tensor     # [n+1]
    stds: torch.Tensor       # [n]
    latent_height: int       # unpacked latent grid
    latent_width: int

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]

    def select(self, index: torch.Tensor | list[int]) -> "Trajectory":
        index = torch.as_tensor(index, dtype=torch.long, device=self.latents.device)
        return Trajectory(self.latents[index], self.log_probs[index], self.noise[index],
                          self.sigmas, self.stds, self.latent_height, self.latent_width)


# --- layout helpers ---------------------------------------------------------------------------

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> FLUX's packed [B, (h/2)(w/2), 4C] (2x2 patches)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`."""
    b, _, c4 = packed.shape
    x = packed.view(b, latent_height // 2, latent_width // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, latent_height, latent_width)


def pack_mask(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """A latent mask [B, 1|C, h, w] (or [B, h, w]) -> packed [B, seq, 4C] matching the latents."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] not in (1, channels):
        raise ScienceT2IError(
            f"latent mask has shape {tuple(mask.shape)}; expected [B, 1 or {channels}, h, w] on the "
            "unpacked latent grid (build it with the subject-mask latent function).")
    return pack_latents(mask.expand(-1, channels, -1, -1).contiguous())


def latent_image_ids(latent_height: int, latent_width: int, device: Any = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FLUX positional ids of the packed image tokens: [seq, 3] = (0, row, col)."""
    ids = torch.zeros(latent_height // 2, latent_width // 2, 3)
    ids[..., 1] += torch.arange(latent_height // 2)[:, None]
    ids[..., 2] += torch.arange(latent_width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def latent_grid(height: int, width: int, vae_scale_factor: int = 8) -> tuple[int, int]:
    """Unpacked latent size for an image size (FLUX needs both even)."""
    if height % (vae_scale_factor * 2) or width % (vae_scale_factor * 2):
        raise ScienceT2IError(
            f"image size {width}x{height} must be a multiple of {vae_scale_factor * 2} for FLUX; "
            "use e.g. 512x512.")
    return height // vae_scale_factor, width // vae_scale_factor


# --- schedule and step maths -----------------------------------------------------------------

def flux_sigmas(num_steps: int, image_seq_len: int,
                scheduler_config: dict | None = None) -> torch.Tensor:
    """The scheduler's sigma table (length n + 1, ending at 0) as the FLUX pipeline sets it:
    linspace(1, 1/n, n) shifted for the image sequence length."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if num_steps < 1:
        raise ScienceT2IError(f"num_steps must be >= 1, got {num_steps}.")
    cfg = dict(scheduler_config or {})
    cfg.setdefault("use_dynamic_shifting", True)
    cfg.setdefault("base_shift", 0.5)
    cfg.setdefault("max_shift", 1.15)
    cfg.setdefault("base_image_seq_len", 256)
    cfg.setdefault("max_image_seq_len", 4096)
    cfg.setdefault("shift", 3.0)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    mu = calculate_shift(image_seq_len, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                         cfg["base_shift"], cfg["max_shift"])
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), mu=mu)
    return scheduler.sigmas.detach().to(torch.float32).cpu()


def churn_std(sigma: torch.Tensor | float, num_steps: int, churn: float,
              s_noise: float = 1.0) -> torch.Tensor:
    """Standard deviation of the injected noise at ``sigma``."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if churn <= 0:
        return torch.zeros_like(sigma)
    gamma = min(churn / num_steps, math.sqrt(2) - 1)
    sigma_hat = sigma * (1 + gamma)
    return s_noise * torch.sqrt(sigma_hat ** 2 - sigma ** 2)


def sde_step_mean(velocity: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | float,
                  sigma_next: torch.Tensor | float, std: torch.Tensor | float) -> torch.Tensor:
    """Mean of x_next given x and the velocity (see the module docstring)."""
    delta = velocity + (std ** 2 / (2 * sigma)) * (-x + (1 - sigma) * velocity)
    return x + (sigma_next - sigma) * delta


def gaussian_log_density(x_next: torch.Tensor, mean: torch.Tensor,
                         std: torch.Tensor | float) -> torch.Tensor:
    """Per-element log N(x_next; mean, std^2)."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return -((x_next.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - _LOG_SQRT_2PI


def reduce_log_prob(per_element: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multiply by the (packed) mask, then average over all elements but the batch: [B]."""
    if mask is not None:
        per_element = per_element * mask.to(per_element.dtype)
    return per_element.reshape(per_element.shape[0], -1).mean(dim=1)


# --- model calls -----------------------------------------------------------------------------

def predict_velocity(transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor | float,
                     cond: FluxConditioning, img_ids: torch.Tensor,
                     guidance: float | None = 0.0) -> torch.Tensor:
    """FLUX velocity at (x, sigma); the transformer takes timestep = sigma (the pipeline's t/1000).
    ``transformer`` may be wrapped for several processes (DDP): the call goes through it."""
    b = x.shape[0]
    inner = getattr(transformer, "module", transformer)  # DDP keeps the model in .module
    dtype = next(inner.parameters()).dtype
    timestep = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1).expand(b)
    guidance_vec = None
    if getattr(inner.config, "guidance_embeds", False):
        guidance_vec = torch.full([b], float(guidance or 0.0), dtype=torch.float32, device=x.device)
    out = transformer(hidden_states=x.to(dtype), timestep=timestep, guidance=guidance_vec,
                      pooled_projections=cond.pooled_embeds.to(dtype),
                      encoder_hidden_states=cond.prompt_embeds.to(dtype),
                      txt_ids=cond.text_ids, img_ids=img_ids, return_dict=False)[0]
    return out.float()


Generators = Union[torch.Generator, list[torch.Generator], None]


def draw_noise(shape: tuple[int, ...] | torch.Size, generator: Generators,
               device: Any) -> torch.Tensor:
    """Standard normal noise on ``device``; with a list of generators, row i comes from
    generator i (so a sample's noise does not depend on the batch it is drawn in)."""
    from diffusers.utils.torch_utils import randn_tensor
    return randn_tensor(tuple(shape), generator=generator, device=torch.device(device))


def initial_noise(batch: int, channels: int, latent_height: int, latent_width: int,
                  generator: Generators = None, device: Any = "cpu") -> torch.Tensor:
    """Packed starting noise, drawn in the unpacked layout like the FLUX pipeline."""
    z = draw_noise((batch, channels, latent_height, latent_width), generator, device)
    return pack_latents(z)


def _setup(transformer: torch.nn.Module, cond: FluxConditioning, height: int, width: int,
           num_steps: int, latents: torch.Tensor | None, generator: Generators,
           scheduler_config: dict | None, vae_scale_factor: int):
    device = cond.prompt_embeds.device
    lh, lw = latent_grid(height, width, vae_scale_factor)
    channels = transformer.config.in_channels // 4
    if latents is None:
        latents = initial_noise(len(cond), channels, lh, lw, generator, device)
    elif latents.shape != (len(cond), (lh // 2) * (lw // 2), channels * 4):
        raise ScienceT2IError(
            f"starting latents have shape {tuple(latents.shape)}; expected "
            f"{(len(cond), (lh // 2) * (lw // 2), channels * 4)} (packed) for {width}x{height}.")
    sigmas = flux_sigmas(num_steps, latents.shape[1], scheduler_config)
    img_ids = latent_image_ids(lh, lw, device)
    return latents.float().to(device), sigmas, img_ids, lh, lw


@torch.no_grad()
def sample_trajectory(transformer: torch.nn.Module, cond: FluxConditioning, *, height: int = 512,
                      width: int = 512, num_steps: int = 30, churn: float = 0.1,
                      s_noise: float = 1.0, guidance: float = 0.0,
                      generator: Generators = None,
                      latents: torch.Tensor | None = None, scheduler_config: dict | None = None,
                      vae_scale_factor: int = 8,
                      step_callback: Callable[[int], None] | None = None) -> Trajectory:
    """Sample with the stochastic Euler step, recording latents, noise and log-probs per step.
    ``generator``: one for the batch, or one per sample."""
    x, sigmas, img_ids, lh, lw = _setup(transformer, cond, height, width, num_steps, latents,
                                        generator, scheduler_config, vae_scale_factor)
    if churn <= 0:
        raise ScienceT2IError("log-probabilities need a stochastic sampler: set churn > 0 "
                              "(the paper uses 0.1).")
    states, noises, log_probs, stds = [x], [], [], []
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        std = churn_std(sigma, num_steps, churn, s_noise).item()
        v = predict_velocity(transformer, x, sigma, cond, img_ids, guidance)
        mean = sde_step_mean(v, x, sigma, sigma_next, std)
        eps = draw_noise(x.shape, generator, x.device)
        x = mean + std * eps
        log_probs.append(reduce_log_prob(gaussian_log_density(x, mean, std)))
        states.append(x)
        noises.append(eps)
        stds.append(std)
        if step_callback is not None:
            step_callback(i)
    return Trajectory(torch.stack(states, 1), torch.stack(log_probs, 1), torch.stack(noises, 1),
                      sigmas, torch.tensor(stds, dtype=torch.float32), lh, lw)


@torch.no_grad()
def sample_plain(transformer: torch.nn.Module, cond: FluxConditioning, *, height: int = 512,
                 width: int = 512, num_steps: int = 30, churn: float = 0.1, s_noise: float = 1.0,
                 guidance: float = 0.0, generator: Generators = None,
                 latents: torch.Tensor | None = None, scheduler_config: dict | None = None,
                 vae_scale_factor: int = 8) -> torch.Tensor:
    """The same sampler without log-probs or trajectory bookkeeping; returns final packed latents.
    ``churn=0`` gives the deterministic Euler sampler of the FLUX pipeline."""
    x, sigmas, img_ids, _, _ = _setup(transformer, cond, height, width, num_steps, latents,
                                      generator, scheduler_config, vae_scale_factor)
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        std = churn_std(sigma, num_steps, churn, s_noise).item()
        v = predict_velocity(transformer, x, sigma, cond, img_ids, guidance)
        x = sde_step_mean(v, x, sigma, sigma_next, std)
        if std > 0:
            x = x + std * draw_noise(x.shape, generator, x.device)
    return x


def transition_log_prob(transformer: torch.nn.Module, trajectory: Trajectory, step: int,
                        cond: FluxConditioning, *, mask: torch.Tensor | None = None,
                        guidance: float = 0.0) -> torch.Tensor:
    """Log-prob [B] of the recorded transition ``step`` -> ``step + 1`` under ``transformer``
    (differentiable through the velocity). ``mask`` is a latent mask [B, 1|C, h, w] multiplied
    into the per-element log-densities before averaging over all elements."""
    x = trajectory.latents[:, step].float()
    x_next = trajectory.latents[:, step + 1].float()
    sigma = trajectory.sigmas[step].item()
    sigma_next = trajectory.sigmas[step + 1].item()
    std = trajectory.stds[step].item()
    img_ids = latent_image_ids(trajectory.latent_height, trajectory.latent_width, x.device)
    v = predict_velocity(transformer, x, sigma, cond, img_ids, guidance)
    mean = sde_step_mean(v, x, sigma, sigma_next, std)
    packed_mask = None
    if mask is not None:
        packed_mask = pack_mask(mask.to(x.device), x.shape[-1] // 4)
    return reduce_log_prob(gaussian_log_density(x_next, mean, std), packed_mask)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, packed: torch.Tensor, latent_height: int,
                   latent_width: int) -> torch.Tensor:
    """Packed FLUX latents -> ComfyUI IMAGE [B, H, W, 3] float32 in 0..1."""
    z = unpack_latents(packed.float(), latent_height, latent_width)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = z / vae.config.scaling_factor + shift
    image = vae.decode(z.to(next(vae.parameters()).dtype), return_dict=False)[0]
    return ((image.float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu()
