"""Stage-2 round time of FLUX.1-dev on 1 and 8 H100s, on paper, from measured FLOP counts.

Each model is built at its real size on PyTorch's meta device (shapes only, no memory, no
weights) and run under ``torch.utils.flop_counter.FlopCounterMode``, which counts every matmul,
convolution and attention the forward (and the backward, with gradient checkpointing's
recomputation) dispatches:

- FLUX.1-dev transformer (19 double + 38 single blocks, width 3072) at 512 px: 1024 image +
  512 T5 tokens; a forward per sample, and the LoRA training forward + backward with gradient
  checkpointing (rank 16 on to_q, to_k, to_v, to_out.0, as the trainer attaches it);
- the VAE decoder (512 px), the T5-XXL encoder (512 tokens), CLIP-H's image tower (SciScore,
  224 px) and text tower (77 tokens); GroundingDINO-T does not run on the meta device
  (it makes CPU tensors inside), so its count comes from one CPU forward at 512 px with
  random weights (``--gdino``; deformable attention's grid sampling is not counted).

A round with the pack's defaults (``rollout.prompts_per_round`` P = 8, K = 2 samples per
prompt, 30 sampling steps, "oft" on all 30 timesteps, 1 pair per micro-batch): P*K prompt
encodes, P*K*30 transformer forwards, P*K VAE decodes, SciScore and GroundingDINO on each
image; then per pair and timestep one reference forward on 2 samples and one policy
forward + backward on 2 samples. Time = FLOPs / (MFU x 989 TFLOP/s, the H100 SXM's dense
bf16 peak); on 8 GPUs each process samples P/8 prompts and trains its pairs, and DDP
all-reduces the LoRA's fp32 gradients once per optimizer step (ring all-reduce: each GPU sends
and receives 2 (N - 1) / N of them).

    python benchmarks/stage2_round.py [--mfu 0.4] [--prompts 8] [--gdino]
"""
from __future__ import annotations

import argparse
import math

H100_BF16 = 989e12          # dense bf16 FLOP/s, H100 SXM
NVLINK_ALLREDUCE = 200e9    # bytes/s of ring all-reduce bus bandwidth assumed per GPU (NVLink 4
#                             peaks at 450 GB/s each way; NCCL reaches ~200-350 GB/s bus)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def flux_dev(lora: bool = False):
    """FLUX.1-dev's transformer on the meta device (with the trainer's rank-16 LoRA)."""
    import torch
    from diffusers import FluxTransformer2DModel
    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_DEV)
        model.requires_grad_(False)
        if lora:
            from science_t2i.training.flux.model import attach_lora
            attach_lora(model, 16, 16.0, "gaussian")
    return model


def flux_dev_lora_gradient_bytes() -> int:
    """Bytes DDP all-reduces per optimizer step for FLUX.1-dev: the rank-16 LoRA's fp32
    gradients (the trainers keep trained parameters in fp32)."""
    return sum(p.numel() * 4 for p in flux_dev(lora=True).parameters() if p.requires_grad)


def reference_policy_bytes() -> tuple[int, int]:
    """Weight bytes (bf16) of the stage-2 policy + reference at FLUX.1-dev size: continuing the
    SFT LoRA with a frozen second adapter (this pack), and the reference implementation's
    deep copy of the transformer with its LoRA."""
    model = flux_dev(lora=True)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return 2 * (base + 2 * lora), 2 * 2 * (base + lora)


def _flux_inputs(batch: int, image_tokens: int = 1024, text_tokens: int = 512) -> dict:
    import torch
    meta = dict(device="meta")
    return dict(hidden_states=torch.randn(batch, image_tokens, 64, **meta),
                encoder_hidden_states=torch.randn(batch, text_tokens, 4096, **meta),
                pooled_projections=torch.randn(batch, 768, **meta),
                timestep=torch.ones(batch, **meta), guidance=torch.ones(batch, **meta),
                img_ids=torch.zeros(image_tokens, 3, **meta),
                txt_ids=torch.zeros(text_tokens, 3, **meta), return_dict=False)


def measure(gdino: bool) -> dict[str, float]:
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPModel, T5Config, T5EncoderModel
    out: dict[str, float] = {}
    model = flux_dev()
    with torch.no_grad():
        out["flux_forward"] = _flops(lambda: model(**_flux_inputs(1)))
    trained = flux_dev(lora=True)
    trained.enable_gradient_checkpointing()
    trained.train()
    out["flux_train_2"] = _flops(lambda: trained(**_flux_inputs(2))[0].float().square().mean()
                                 .backward())
    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                            latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
        t5 = T5EncoderModel(T5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64,
                                     d_kv=64, feed_forward_proj="gated-gelu"))
        clip = CLIPModel(CLIPConfig(
            text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                             num_attention_heads=16, hidden_act="gelu"),
            vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                               num_attention_heads=16, patch_size=14, image_size=224,
                               hidden_act="gelu"),
            projection_dim=1024))
    with torch.no_grad():
        out["vae_decode"] = _flops(lambda: vae.decode(torch.randn(1, 16, 64, 64, device="meta")))
        out["t5_encode"] = _flops(lambda: t5(torch.zeros(1, 512, dtype=torch.long,
                                                         device="meta")))
        out["clip_image"] = _flops(lambda: clip.get_image_features(
            pixel_values=torch.randn(1, 3, 224, 224, device="meta")))
        out["clip_text"] = _flops(lambda: clip.get_text_features(
            input_ids=torch.zeros(1, 77, dtype=torch.long, device="meta")))
    out["gdino"] = _gdino_flops() if gdino else float("nan")
    return out


def _gdino_flops() -> float:
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    with torch.no_grad():
        return _flops(lambda: model(pixel_values=torch.randn(1, 3, 512, 512),
                                    input_ids=torch.zeros(1, 8, dtype=torch.long)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mfu", type=float, default=0.4, help="share of the bf16 peak reached")
    ap.add_argument("--prompts", type=int, default=8, help="rollout.prompts_per_round")
    ap.add_argument("--samples", type=int, default=2, help="rollout.samples_per_prompt")
    ap.add_argument("--steps", type=int, default=30, help="sampling steps = oft timesteps")
    ap.add_argument("--gdino", action="store_true", help="count GroundingDINO-T on the CPU "
                                                         "(builds 172 M random weights)")
    args = ap.parse_args()
    f = measure(args.gdino)
    tf = 1e-12
    print("measured FLOPs (FlopCounterMode):")
    print(f"  FLUX.1-dev forward, 1 sample at 512 px (1024 + 512 tokens) {f['flux_forward'] * tf:8.2f} TFLOP")
    print(f"  LoRA training forward + backward, 2 samples, checkpointing   {f['flux_train_2'] * tf:8.2f} TFLOP "
          f"({f['flux_train_2'] / (2 * f['flux_forward']):.2f}x the forward)")
    for key, name in (("vae_decode", "VAE decode, 512 px"), ("t5_encode", "T5-XXL encode, 512 tokens"),
                      ("clip_image", "SciScore image tower, 224 px"),
                      ("clip_text", "SciScore text tower, 77 tokens"),
                      ("gdino", "GroundingDINO-T, 512 px (CPU count)")):
        print(f"  {name:<56}{f[key] * tf:8.3f} TFLOP")
    P, K, T = args.prompts, args.samples, args.steps
    images = P * K
    gdino = 0.0 if math.isnan(f["gdino"]) else f["gdino"]
    rollout = images * (f["t5_encode"] + T * f["flux_forward"] + f["vae_decode"]
                        + f["clip_image"] + f["clip_text"] + gdino)
    train = P * T * (2 * f["flux_forward"] + f["flux_train_2"])   # one pair per prompt
    rate = args.mfu * H100_BF16
    grad_bytes = flux_dev_lora_gradient_bytes()
    print(f"\nround: {P} prompts x {K} samples, {T} steps, oft on all {T} timesteps, "
          f"1 pair per prompt (ties drop pairs: this is the most)")
    print(f"  rollouts {rollout * 1e-15:7.2f} PFLOP   training {train * 1e-15:7.2f} PFLOP   "
          f"total {(rollout + train) * 1e-15:7.2f} PFLOP")
    print(f"  LoRA gradients all-reduced per optimizer step: {grad_bytes / 1e6:.1f} MB fp32 "
          f"({grad_bytes // 4 / 1e6:.2f} M parameters)")
    ours, deep_copy = reference_policy_bytes()
    print(f"  policy + reference weights (bf16): {ours / 1e9:.2f} GB with a frozen SFT "
          f"adapter vs {deep_copy / 1e9:.2f} GB with the reference's deep copy "
          f"({ours / deep_copy:.3f}x)")
    print(f"at {args.mfu:.0%} of {H100_BF16 * tf:.0f} TFLOP/s:")
    t1 = (rollout + train) / rate
    print(f"  1 H100 : {t1:7.1f} s per round ({rollout / rate:.1f} s rollouts, "
          f"{train / rate:.1f} s training, {P} optimizer steps)")
    for n in (8,):
        comm = 2 * (n - 1) / n * grad_bytes / NVLINK_ALLREDUCE
        per_gpu = (rollout + train) / n / rate
        steps = math.ceil(P / n)
        print(f"  {n} H100s: {per_gpu + steps * comm:7.1f} s per round with the same {P} "
              f"prompts ({steps} optimizer step(s) of {min(P, n)} pairs; all-reduce "
              f"{comm * 1e3:.2f} ms per step at {NVLINK_ALLREDUCE / 1e9:.0f} GB/s), "
              f"{t1 / (per_gpu + steps * comm):.1f}x faster")
        print(f"  {n} H100s: {t1 + P * comm:7.1f} s per round with {n * P} prompts "
              f"({P} optimizer steps of {n} pairs: {n}x the data per round)")


if __name__ == "__main__":
    main()
