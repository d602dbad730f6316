"""A tiny FLUX.1 written as ComfyUI's single files: the transformer in the BFL layout ComfyUI
loads (``model.diffusion_model.`` prefix, bf16 or fp8), CLIP-L and T5 in transformers' layout
(fp8 too), and ``ae.safetensors`` in the BFL (ldm) layout, plus a T5 tokenizer folder.

The transformer has FLUX.1's width (24 heads x 128; diffusers' converter is written for it)
with one block of each kind and small text inputs (~0.5 B parameters); the rest is tiny.
The layouts are written from ComfyUI's recorded FLUX naming (tests/lora_formats.py),
independently of the pack and of diffusers' conversion.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_formats import COMFY_DOUBLE, COMFY_SINGLE, COMFY_TOP
from tiny_flux import _t5_tokenizer

PREFIX = "model.diffusion_model."


def transformer(seed: int = 0, guidance: bool = True):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=guidance,
        axes_dims_rope=(16, 56, 56)).eval().requires_grad_(False)


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


# the qk-norm scales, which the LoRA naming tables (linear layers only) leave out
_DOUBLE_NORMS = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale",
                 "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
                 "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
                 "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale"}
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale",
                 "attn.norm_k.weight": "norm.key_norm.scale"}


def transformer_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel keys -> the BFL keys of flux1-dev.safetensors, by
    ComfyUI's own naming (lora_formats' tables): fused rows concatenated in slice order, and
    the final modulation's halves swapped (BFL: shift, scale)."""
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}

    def move(src: str, dst: str, index: int | None) -> None:
        for p in ("weight", "bias"):
            if f"{src}.{p}" in sd:
                v = sd.pop(f"{src}.{p}")
                if index is None:
                    out[f"{dst}.{p}"] = v
                else:
                    fused.setdefault(f"{dst}.{p}", {})[index] = v

    for src, dst in COMFY_TOP.items():
        move(src, dst, None)
    for p in ("weight", "bias"):
        key = f"final_layer.adaLN_modulation.1.{p}"
        out[key] = _swap_halves(out[key])
    for prefix, bfl, table, norms in (("transformer_blocks", "double_blocks", COMFY_DOUBLE,
                                       _DOUBLE_NORMS),
                                      ("single_transformer_blocks", "single_blocks",
                                       COMFY_SINGLE, _SINGLE_NORMS)):
        for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")}):
            for src, (dst, index) in table.items():
                move(f"{prefix}.{i}.{src}", f"{bfl}.{i}.{dst}", index)
            for src, dst in norms.items():
                out[f"{bfl}.{i}.{dst}"] = sd.pop(f"{prefix}.{i}.{src}")
    out |= {k: torch.cat([parts[j] for j in sorted(parts)]) for k, parts in fused.items()}
    assert not sd, f"unconverted keys: {sorted(sd)[:5]}"
    return {PREFIX + k: v.contiguous() for k, v in out.items()}


def to_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices in float8 e4m3 (as flux1-dev-fp8 / t5xxl_fp8_e4m3fn), the rest kept."""
    return {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in sd.items()}


def vae(seed: int = 0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False).eval()


def vae_to_bfl(sd: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> the ldm keys of ae.safetensors."""
    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", n)
        n = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", n)
        n = re.sub(r"up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"up.{blocks - 1 - int(m.group(1))}.block.", n)
        n = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"up.{blocks - 1 - int(m.group(1))}.upsample.", n)
        n = n.replace("mid_block.resnets.0.", "mid.block_1.")
        n = n.replace("mid_block.resnets.1.", "mid.block_2.")
        n = n.replace("mid_block.attentions.0.group_norm.", "mid.attn_1.norm.")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            n = n.replace(f"mid_block.attentions.0.{a}.", f"mid.attn_1.{b}.")
        n = n.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".attn_1." in n and n.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]   # ldm's attention projections are 1x1 convolutions
        out[n] = v.contiguous()
    return out


def clip(seed: int = 0):
    """CLIP-L's layout at width 32: the real vocabulary (open_clip's BPE ids fit it)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, projection_dim=32,
        hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)).eval()


def clip_file_keys(model) -> dict[str, torch.Tensor]:
    """clip_l.safetensors' keys: text_model.* (transformers 5 drops the prefix in memory)."""
    sd = model.state_dict()
    return {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous()
            for k, v in sd.items()}


def t5(seed: int = 0, vocab: int = 103):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0)).eval()


def t5_file_keys(model) -> dict[str, torch.Tensor]:
    """t5xxl_fp16.safetensors' keys: shared.weight and encoder.*, the tied copy left out."""
    return {k: v.contiguous() for k, v in model.state_dict().items()
            if k != "encoder.embed_tokens.weight"}


def write_comfy_files(models_dir: Path, fp8: bool = False) -> dict:
    """The four files in ComfyUI's folders under ``models_dir``, a T5 tokenizer folder, and
    the in-memory models they hold (for comparisons)."""
    tok, vocab = _t5_tokenizer(32)
    models = {"transformer": transformer(), "vae": vae(), "clip": clip(), "t5": t5(vocab=vocab)}
    files = {
        "transformer": (models_dir / "diffusion_models" / "flux1-dev.safetensors",
                        transformer_to_bfl(models["transformer"].state_dict())),
        "vae": (models_dir / "vae" / "ae.safetensors",
                vae_to_bfl(models["vae"].state_dict(), 2)),
        "clip": (models_dir / "text_encoders" / "clip_l.safetensors",
                 clip_file_keys(models["clip"])),
        "t5": (models_dir / "text_encoders" / ("t5xxl_fp8_e4m3fn.safetensors" if fp8
                                               else "t5xxl_fp16.safetensors"),
               t5_file_keys(models["t5"])),
    }
    for kind, (path, sd) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "transformer":
            sd = to_fp8(sd) if fp8 else {k: v.to(torch.bfloat16) for k, v in sd.items()}
        elif kind == "t5" and fp8:
            sd = to_fp8(sd)
        save_file(sd, str(path))
    tokenizers = models_dir.parent / "flux_tokenizers"
    tok.save_pretrained(str(tokenizers / "tokenizer_2"))
    return {"models": models, "paths": {k: p for k, (p, _) in files.items()},
            "tokenizers": tokenizers}
