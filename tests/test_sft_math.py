"""FLUX training maths checked against independent computations on fixed tensors."""
from __future__ import annotations

import math

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.flux.flow_matching import (flow_matching_loss, flow_target,
                                                     noisy_latents, sample_sigmas, text_ids)
from science_t2i.training.flux.sampler import latent_image_ids, pack_latents, unpack_latents


def test_pack_matches_explicit_patch_layout_and_round_trips():
    b, c, h, w = 2, 3, 4, 6
    x = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)
    packed = pack_latents(x)
    assert packed.shape == (b, (h // 2) * (w // 2), 4 * c)
    # einops: "b c (i di) (j dj) -> b (i j) (c di dj)", written out element by element
    expected = torch.empty(b, (h // 2) * (w // 2), 4 * c)
    for bb in range(b):
        for i in range(h // 2):
            for j in range(w // 2):
                for cc in range(c):
                    for di in range(2):
                        for dj in range(2):
                            expected[bb, i * (w // 2) + j, cc * 4 + di * 2 + dj] = \
                                x[bb, cc, 2 * i + di, 2 * j + dj]
    assert torch.equal(packed, expected)
    assert torch.equal(unpack_latents(packed, h, w), x)


def test_image_and_text_ids():
    ids = latent_image_ids(4, 6)
    assert ids.shape == (2 * 3, 3)
    for i in range(2):
        for j in range(3):
            assert ids[i * 3 + j].tolist() == [0.0, float(i), float(j)]
    assert torch.equal(text_ids(5), torch.zeros(5, 3))


def test_noisy_latents_and_target():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g)
    noise = torch.randn(3, 2, 4, 4, generator=g)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    xt = noisy_latents(x0, noise, sigma)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], noise[2])
    assert torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    # the target is the velocity d x_t / d sigma, whatever sigma
    jac = torch.autograd.functional.jacobian(
        lambda sig: noisy_latents(x0[:1], noise[:1], sig), torch.tensor([0.4]))
    assert torch.allclose(jac.reshape(x0[:1].shape), noise[:1] - x0[:1], atol=1e-6)
    assert torch.equal(flow_target(x0, noise), noise - x0)


def test_flow_matching_loss_is_per_sample_mse_averaged():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    # sample 0: (1 + 4) / 2 = 2.5 ; sample 1: (9 + 1) / 2 = 5 ; mean 3.75
    assert flow_matching_loss(pred, target).item() == pytest.approx(3.75)


def _ks(samples: torch.Tensor, cdf) -> float:
    x, _ = torch.sort(samples.double())
    n = x.numel()
    f = cdf(x)
    hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    lo = torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum((hi - f).abs(), (f - lo).abs()).max())


N = 20000
KS_LIMIT = 1.63 / math.sqrt(N) * 1.5   # well above the 1% critical value, far below a wrong law


def test_uniform_sampler_distribution():
    s = sample_sigmas(N, "uniform", generator=torch.Generator().manual_seed(1))
    assert s.min() > 0 and s.max() < 1
    assert float(s.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(s.var()) == pytest.approx(1 / 12, abs=0.003)
    assert _ks(s, lambda x: x) < KS_LIMIT


def test_logit_normal_sampler_distribution():
    m, sd = 0.3, 0.8
    s = sample_sigmas(N, "logit_normal", logit_mean=m, logit_std=sd,
                      generator=torch.Generator().manual_seed(2))
    z = torch.log(s.double() / (1 - s.double()))
    assert float(z.mean()) == pytest.approx(m, abs=0.03)
    assert float(z.std()) == pytest.approx(sd, abs=0.03)
    normal_cdf = lambda x: 0.5 * (1 + torch.erf((torch.log(x / (1 - x)) - m) / (sd * math.sqrt(2))))
    assert _ks(s, normal_cdf) < KS_LIMIT
    assert _ks(s, lambda x: x) > 10 * KS_LIMIT   # and clearly not uniform


def _mode_cdf(x: torch.Tensor, scale: float) -> torch.Tensor:
    """P(sigma <= x) for sigma = f(u) = 1 - u - s (cos^2(pi u/2) - 1 + u), f decreasing:
    = 1 - f^{-1}(x), with f^{-1} found by bisection."""
    f = lambda u: 1 - u - scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    lo, hi = torch.zeros_like(x), torch.ones_like(x)
    for _ in range(60):
        mid = (lo + hi) / 2
        above = f(mid) > x          # f decreasing: the root lies to the right
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 1 - (lo + hi) / 2


def test_mode_sampler_distribution():
    s = sample_sigmas(N, "mode", mode_scale=1.29, generator=torch.Generator().manual_seed(3))
    assert _ks(s, lambda x: _mode_cdf(x, 1.29)) < KS_LIMIT
    assert _ks(s, lambda x: x) > 5 * KS_LIMIT
    # mid noise levels are favoured: more mass in [0.25, 0.75] than the uniform 0.5
    assert float(((s > 0.25) & (s < 0.75)).double().mean()) > 0.55
    flat = sample_sigmas(N, "mode", mode_scale=0.0, generator=torch.Generator().manual_seed(4))
    assert _ks(flat, lambda x: x) < KS_LIMIT


def test_sampler_bad_inputs():
    with pytest.raises(ScienceT2IError, match="uniform"):
        sample_sigmas(4, "cosine")
    with pytest.raises(ScienceT2IError, match="mode_scale"):
        sample_sigmas(4, "mode", mode_scale=5.0)


def test_seeded_sampler_is_reproducible():
    a = sample_sigmas(8, "logit_normal", generator=torch.Generator().manual_seed(5))
    b = sample_sigmas(8, "logit_normal", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "mode"])
def test_library_sampler_equals_the_hand_written_draws(kind):
    """sample_sigmas draws through diffusers' compute_density_for_timestep_sampling; with the
    same generator it gives what the SD3 formulas written out here give."""
    m, sd, s = 0.3, 0.8, 1.29

    def by_hand(g):
        if kind == "uniform":
            u = torch.rand(64, generator=g)
        elif kind == "logit_normal":
            u = torch.sigmoid(torch.randn(64, generator=g) * sd + m)
        else:
            u = torch.rand(64, generator=g)
            u = 1 - u - s * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        return u.clamp(1e-5, 1 - 1e-5)
    ours = sample_sigmas(64, kind, logit_mean=m, logit_std=sd, mode_scale=s,
                         generator=torch.Generator().manual_seed(11))
    expected = by_hand(torch.Generator().manual_seed(11))
    assert torch.allclose(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seq", [256, 1024, 4096, 6000])
def test_flux_shift_equals_the_linear_rule(seq):
    """FLUX's resolution shift mu is diffusers' calculate_shift, the line through
    (256, 0.5) and (4096, 1.15)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from science_t2i.training.flux.sampler import flux_sigmas
    mu = 0.5 + (1.15 - 0.5) * (seq - 256) / (4096 - 256)
    assert calculate_shift(seq) == pytest.approx(mu, rel=1e-12)
    t = torch.linspace(1, 1 / 8, 8, dtype=torch.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / t - 1))   # the time shift with exp(mu)
    assert torch.allclose(flux_sigmas(8, seq)[:-1].double(), shifted, atol=1e-6)
