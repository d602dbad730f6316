"""The memory plan against a real GPU: FLUX.1-dev at full size with random weights (built on
the GPU, no download), per base precision, the measured peak (``torch.cuda.max_memory_allocated``)
and seconds per SFT step and per shortened stage-2 round, beside the plan's count for the same
settings (``benchmarks/memory.py``). Under 8 minutes for the four bases on one H100.

    python benchmarks/gpu_check.py                    # bf16, int8, fp8, nf4 at 512 px
    python benchmarks/gpu_check.py --bases int8 --json
    python benchmarks/gpu_check.py --tiny             # the same code on a small FLUX (CPU)
    bash benchmarks/gpu_check.sh --out "$OUT"         # on a lent GPU machine (no internet)

It uses the trainers' own code: ``quantize_transformer`` (torchao), ``attach_lora`` (peft),
``sample_trajectory`` and ``decode_latents`` for the rollouts, ``adapter_disabled`` for the
reference. SFT step: batch 1, gradient checkpointing, LoRA rank 16, AdamW. Shortened round:
2 rollouts x 4 steps, VAE decode, SciScore-shaped CLIP-H (fp16) scoring 2 images and
GroundingDINO-tiny (fp32) masking one, each on the GPU only while used, then a Flow-DPO-shaped
step on the pair (reference forward, policy forward + backward on winner and loser).
Needs diffusers and torchao besides torch / transformers / peft.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

import memory_model as mm

G = 2 ** 30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / G if device.type == "cuda" else float("nan")


def build(base: str, config: dict, device: torch.device, dtype: torch.dtype):
    """Random FLUX built on the device, then quantized there (the trainers quantize on the
    CPU before moving; the result is the same tensors, built faster)."""
    from science_t2i.training.flux.model import attach_lora
    from science_t2i.training.flux.quantize import quantize_transformer
    with torch.device(device):
        model = mm.flux_transformer(config, dtype)
    if base != "bf16":
        quantize_transformer(model, base)
    params = attach_lora(model, 16, 16.0, "gaussian")
    model.enable_gradient_checkpointing()
    model.train()
    return model, params


def sft_steps(model, params, device, dtype, resolution: int, steps: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for i in range(steps + 1):
        inputs = mm.flux_inputs(model, 1, resolution, mm.TEXT_TOKENS, dtype)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        _sync(device)
        t = time.perf_counter()
        out = model(**inputs)[0]
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        _sync(device)
        if i:   # the first step warms up kernels and allocates Adam's state
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


SMALL_VAE = dict(mm.FLUX_VAE, block_out_channels=(32, 32, 32, 32), layers_per_block=1)
SMALL_CLIP = dict(text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                   num_hidden_layers=2),
                  vision_config=dict(hidden_size=64, intermediate_size=128,
                                     num_attention_heads=2, num_hidden_layers=2, patch_size=14,
                                     image_size=224), projection_dim=64)


def _score(small: bool, device: torch.device, images: torch.Tensor) -> None:
    """SciScore's shapes: a CLIP-H in fp16 (fp32 on a CPU) scoring the images at 224 px."""
    from transformers import CLIPConfig, CLIPModel
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with torch.device(device), mm.default_dtype(dtype):
        model = CLIPModel(CLIPConfig(**(SMALL_CLIP if small else mm.CLIP_H))).eval()
    pixels = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(224, 224),
                                             mode="bicubic").to(dtype)
    with torch.no_grad():
        model(input_ids=torch.zeros(len(images), 77, dtype=torch.long, device=device),
              pixel_values=pixels)


def _mask(small: bool, device: torch.device, images: torch.Tensor) -> None:
    """GroundingDINO-tiny (fp32) detecting in one image at 800 px (256 px with --tiny)."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
    with torch.device(device):
        model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    side = 256 if small else 800
    pixels = torch.nn.functional.interpolate(images[:1].permute(0, 3, 1, 2).float(),
                                             size=(side, side), mode="bilinear")
    with torch.no_grad():
        model(pixel_values=pixels, input_ids=torch.zeros(1, 8, dtype=torch.long, device=device),
              attention_mask=torch.ones(1, 8, dtype=torch.long, device=device))


def stage2_round(model, device, dtype, resolution: int, small: bool) -> float:
    from diffusers import AutoencoderKL
    from science_t2i.training.flux.reference_policy import adapter_disabled
    from science_t2i.training.flux.sampler import (FluxConditioning, decode_latents,
                                                   latent_image_ids, sample_trajectory)
    c = model.config
    with torch.device(device), mm.default_dtype(dtype):
        vae = AutoencoderKL(**(SMALL_VAE if small else mm.FLUX_VAE)).eval()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    lh = lw = resolution // scale
    _sync(device)
    t = time.perf_counter()
    cond = FluxConditioning(
        torch.randn(2, mm.TEXT_TOKENS, c.joint_attention_dim, device=device, dtype=dtype),
        torch.randn(2, c.pooled_projection_dim, device=device, dtype=dtype),
        torch.zeros(mm.TEXT_TOKENS, 3, device=device))
    model.eval()
    traj = sample_trajectory(model, cond, height=resolution, width=resolution, num_steps=4,
                             churn=0.1, guidance=3.5 if c.guidance_embeds else 0.0,
                             generator=[torch.Generator().manual_seed(i) for i in range(2)],
                             scheduler_config={}, vae_scale_factor=scale)
    with torch.no_grad():
        images = decode_latents(vae, traj.final.to(device), lh, lw)
    for use in (_score, _mask):   # each model on the device only while it is used
        use(small, device, images)
        gc.collect()
    model.train()
    inputs = dict(hidden_states=traj.final.to(device, dtype),
                  encoder_hidden_states=cond.prompt_embeds, pooled_projections=cond.pooled_embeds,
                  timestep=torch.full((2,), 0.5, device=device),
                  img_ids=latent_image_ids(lh, lw, device), txt_ids=cond.text_ids,
                  return_dict=False)
    if c.guidance_embeds:
        inputs["guidance"] = torch.full((2,), 3.5, device=device)
    with torch.inference_mode(), adapter_disabled(model):
        ref = model(**inputs)[0].clone()
    out = model(**inputs)[0]
    (out.float() - ref.float()).square().mean().backward()
    _sync(device)
    return time.perf_counter() - t


def plan(base: str, resolution: int) -> dict:
    """The plan (benchmarks/memory.py) for the check's own settings, allocated GiB."""
    import memory
    sft = memory.sft_row("check", resolution, base, {"train.batch_size": 1})
    s2 = memory.stage2_row("check", resolution, base, {
        "rollout.batch_size": 2, "train.pairs_per_step": 1, "reward.batch_size": 2,
        "reward.dtype": "auto"})
    return {"sft": sft["allocated_gib"], "stage2": s2["allocated_gib"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", default="bf16,int8,fp8,nf4")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a small FLUX on this machine's device")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default="bench_out", help="folder for gpu_check.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = mm.SMALL_FLUX if args.tiny else None
    rows = []
    for base in args.bases.split(","):
        if base == "fp8" and device.type == "cuda" and \
                torch.cuda.get_device_capability(device) < (8, 9):
            print(f"{base}: skipped (no fp8 hardware)")
            continue
        t0 = time.perf_counter()
        _reset(device)
        model, params = build(base, config, device, dtype)
        _reset(device)   # the build's transient bf16 copy is not part of training
        step_s = sft_steps(model, params, device, dtype, args.resolution, args.steps)
        sft_peak = _peak(device)
        _reset(device)
        round_s = stage2_round(model, device, dtype, args.resolution, args.tiny)
        round_peak = _peak(device)
        del model, params
        planned = ({"sft": float("nan"), "stage2": float("nan")} if args.tiny else
                   plan(base, args.resolution))
        rows.append({"base": base, "device": torch.cuda.get_device_name(device)
                     if device.type == "cuda" else "cpu",
                     "resolution": args.resolution, "sft_step_s": round(step_s, 3),
                     "sft_peak_gib": round(sft_peak, 2),
                     "sft_plan_gib": planned["sft"], "round_s": round(round_s, 2),
                     "round_peak_gib": round(round_peak, 2),
                     "round_plan_gib": planned["stage2"],
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]) if args.json else rows[-1], flush=True)
    bf16 = next((r for r in rows if r["base"] == "bf16"), None)
    for r in rows:
        if bf16 and r is not bf16:
            print(f"{r['base']}: SFT step {r['sft_step_s'] / bf16['sft_step_s']:.2f}x bf16's")
        if r["sft_peak_gib"] == r["sft_peak_gib"]:   # not nan (a GPU)
            print(f"{r['base']}: measured / planned peak: SFT "
                  f"{r['sft_peak_gib'] / r['sft_plan_gib']:.2f}, round "
                  f"{r['round_peak_gib'] / r['round_plan_gib']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
