"""A tiny FLUX for stage-2 tests whose decoded brightness responds to the latents.

The random tiny VAE of ``tiny_flux`` maps every latent to nearly the same grey (brightness
std ~0.001), which leaves a brightness reward nothing to learn from. Here the latent has one
channel (16 values at 8 px) and the decoder's output convolution is scaled up, so brightness
varies visibly between samples (std ~0.03) and follows the latents.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny_flux import TinyFluxSpec, build_tiny_flux_pipeline

RES = 8  # VAE factor 2 -> a 4x4 latent grid, 4 packed tokens


def build_bright_flux(folder: Path) -> Path:
    from diffusers import AutoencoderKL
    build_tiny_flux_pipeline(folder, TinyFluxSpec(latent_channels=1))
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.weight *= 20
        vae.decoder.conv_out.bias.zero_()
    vae.save_pretrained(str(folder / "vae"))
    return folder


def write_prompts(path: Path, n: int = 6) -> Path:
    path.write_text(json.dumps([{"prompt": f"a red apple number {i}", "object": "apple"}
                                for i in range(n)]))
    return path


def dpo_overrides(flux_dir: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    # the pack's preset: these tests check its pairing and weighting; the reference preset
    # has its own tests (test_reference_preset.py)
    return ["preset=pack", f"model.path={flux_dir}", f"rollout.prompts={prompts}", f"rollout.resolution={RES}",
            "rollout.steps=6", "rollout.samples_per_prompt=4", "rollout.prompts_per_round=6",
            "rollout.max_sequence_length=32", "reward.kind=brightness", "mask.enabled=false",
            "train.mixed_precision=fp32", "train.gradient_checkpointing=false",
            "train.pairs_per_step=6", "optim.lr=0.1", "lora.rank=4", "lora.alpha=4",
            f"output_dir={out}", "checkpoint.every=0", "checkpoint.keep_last=2",
            "log.progress=false", "log.plot_every=0", *extra]


# Fixtures shared by the stage-2 test modules (import them by name there).

@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return build_bright_flux(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.json")
