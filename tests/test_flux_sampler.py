"""The stochastic Euler sampler: schedule, step maths and log-probs against independent formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.flux import sampler as fs
from torch.distributions import Normal


def tiny_transformer(guidance_embeds: bool = True):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=16,
                                  guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4)).eval()


def conditioning(batch: int = 2, seed: int = 1) -> fs.FluxConditioning:
    g = torch.Generator().manual_seed(seed)
    return fs.FluxConditioning(torch.randn(batch, 5, 32, generator=g),
                               torch.randn(batch, 16, generator=g), torch.zeros(5, 3))


H = W = 64  # latent grid 8x8, 16 packed tokens of 16 channels (4 latent channels)


def test_sigma_table_is_the_shifted_linspace():
    n, seq = 6, 16
    sig = fs.flux_sigmas(n, seq)
    # the FLUX pipeline: mu from the sequence length, exponential time shift, final 0 appended
    m = (1.15 - 0.5) / (4096 - 256)
    mu = seq * m + 0.5 - m * 256
    t = np.linspace(1.0, 1.0 / n, n)
    expected = math.e ** mu / (math.e ** mu + (1 / t - 1))
    assert sig.shape == (n + 1,)
    assert torch.allclose(sig[:-1], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    assert sig[-1] == 0


def test_transition_log_probs_equal_an_independent_gaussian_density():
    tr, cond = tiny_transformer(), conditioning()
    n, churn = 4, 0.1
    traj = fs.sample_trajectory(tr, cond, height=H, width=W, num_steps=n, churn=churn,
                                generator=torch.Generator().manual_seed(3))
    assert traj.latents.shape == (2, n + 1, 16, 16) and traj.log_probs.shape == (2, n)
    ids = fs.latent_image_ids(8, 8)
    gamma = min(churn / n, math.sqrt(2) - 1)
    for i in range(n):
        s, s_next = float(traj.sigmas[i]), float(traj.sigmas[i + 1])
        std = s * math.sqrt((1 + gamma) ** 2 - 1)
        assert traj.stds[i].item() == pytest.approx(std, rel=1e-5)
        x = traj.latents[:, i]
        with torch.no_grad():
            v = tr(hidden_states=x, timestep=torch.full([2], s), guidance=torch.zeros(2),
                   pooled_projections=cond.pooled_embeds, encoder_hidden_states=cond.prompt_embeds,
                   txt_ids=cond.text_ids, img_ids=ids, return_dict=False)[0]
        # the paper's step: delta = v + std^2/(2 sigma) (-x + (1 - sigma) v)
        mean = x + (s_next - s) * (v + std ** 2 / (2 * s) * (-x + (1 - s) * v))
        x_next = traj.latents[:, i + 1]
        # the recorded noise is what moved the sample off the mean
        assert torch.allclose(x_next, mean + std * traj.noise[:, i], atol=1e-5)
        ref = Normal(mean.double(), std).log_prob(x_next.double()).flatten(1).mean(1)
        assert torch.allclose(traj.log_probs[:, i].double(), ref, atol=1e-4)
        # recomputing the transition under the same model gives the same value
        again = fs.transition_log_prob(tr, traj, i, cond)
        assert torch.allclose(again.double(), ref, atol=1e-4)


def test_masked_log_prob_averages_over_all_elements():
    tr, cond = tiny_transformer(), conditioning()
    traj = fs.sample_trajectory(tr, cond, height=H, width=W, num_steps=3,
                                generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:5, 1:7] = 1
    mask[1, :, :, :4] = 1
    step = 1
    got = fs.transition_log_prob(tr, traj, step, cond, mask=mask)
    # independent: per-element density in the UNPACKED layout, masked, mean over C*h*w elements
    s, s_next, std = (float(traj.sigmas[step]), float(traj.sigmas[step + 1]), float(traj.stds[step]))
    x = traj.latents[:, step]
    with torch.no_grad():
        v = tr(hidden_states=x, timestep=torch.full([2], s), guidance=torch.zeros(2),
               pooled_projections=cond.pooled_embeds, encoder_hidden_states=cond.prompt_embeds,
               txt_ids=cond.text_ids, img_ids=fs.latent_image_ids(8, 8), return_dict=False)[0]
    mean = x + (s_next - s) * (v + std ** 2 / (2 * s) * (-x + (1 - s) * v))
    lp = Normal(fs.unpack_latents(mean, 8, 8).double(), std).log_prob(
        fs.unpack_latents(traj.latents[:, step + 1], 8, 8).double())
    expected = (lp * mask).flatten(1).sum(1) / lp[0].numel()
    assert torch.allclose(got.double(), expected, atol=1e-4)
    assert not torch.allclose(got, traj.log_probs[:, step])


def test_pack_round_trip_and_mask_layout():
    z = torch.randn(2, 4, 8, 6)
    assert torch.equal(fs.unpack_latents(fs.pack_latents(z), 8, 6), z)
    m = (torch.rand(2, 1, 8, 6) > 0.5).float()
    packed = fs.pack_mask(m, 4)
    assert torch.equal(fs.unpack_latents(packed, 8, 6), m.expand(-1, 4, -1, -1))
    with pytest.raises(ScienceT2IError, match="latent mask"):
        fs.pack_mask(torch.ones(2, 3, 8, 6), 4)


def test_plain_sampler_without_churn_matches_the_diffusers_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    tr, cond = tiny_transformer(), conditioning()
    n = 3
    x0 = fs.initial_noise(2, 4, 8, 8, torch.Generator().manual_seed(7))
    ours = fs.sample_plain(tr, cond, height=H, width=W, num_steps=n, churn=0.0, latents=x0)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5,
                                            max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    m = (1.15 - 0.5) / (4096 - 256)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=16 * m + 0.5 - m * 256)
    x = x0.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            v = tr(hidden_states=x, timestep=(t / 1000).expand(2), guidance=torch.zeros(2),
                   pooled_projections=cond.pooled_embeds, encoder_hidden_states=cond.prompt_embeds,
                   txt_ids=cond.text_ids, img_ids=fs.latent_image_ids(8, 8), return_dict=False)[0]
            x = sched.step(v, t, x, return_dict=False)[0]
    assert torch.allclose(ours, x, atol=1e-5)


def test_same_seed_same_trajectory_and_plain_matches_final_state():
    tr, cond = tiny_transformer(guidance_embeds=False), conditioning()
    a = fs.sample_trajectory(tr, cond, height=H, width=W, num_steps=3,
                             generator=torch.Generator().manual_seed(11))
    b = fs.sample_trajectory(tr, cond, height=H, width=W, num_steps=3,
                             generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    plain = fs.sample_plain(tr, cond, height=H, width=W, num_steps=3,
                            generator=torch.Generator().manual_seed(11))
    assert torch.allclose(plain, a.final, atol=1e-5)


def test_bad_sampler_input_is_explained():
    tr, cond = tiny_transformer(), conditioning()
    with pytest.raises(ScienceT2IError, match="multiple of 16"):
        fs.sample_trajectory(tr, cond, height=60, width=64, num_steps=2)
    with pytest.raises(ScienceT2IError, match="churn > 0"):
        fs.sample_trajectory(tr, cond, height=H, width=W, num_steps=2, churn=0.0)
    with pytest.raises(ScienceT2IError, match="starting latents"):
        fs.sample_plain(tr, cond, height=H, width=W, num_steps=2, latents=torch.zeros(2, 3, 16))
