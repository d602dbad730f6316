"""Synthetic FLUX LoRA files in every key format the loader reads, and ComfyUI's FLUX naming
(recorded from comfy/utils.py flux_to_diffusers and comfy.lora.model_lora_keys_unet), shared
by the LoRA tests."""
from __future__ import annotations

import torch

from tiny_lora import HIDDEN

RANK, ALPHA = 4, 8.0

# diffusers -> ComfyUI (BFL) names, recorded from ComfyUI's comfy/utils.py flux_to_diffusers:
# block-relative diffusers module -> (BFL parameter, slice index in the fused rows or None).
# Slices: q/k/v are rows [0,h), [h,2h), [2h,3h) of the fused qkv / linear1; proj_mlp is
# [3h, 3h + 4h) of linear1.
COMFY_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None), "attn.to_add_out": ("txt_attn.proj", None),
    "norm1.linear": ("img_mod.lin", None), "norm1_context.linear": ("txt_mod.lin", None),
    "ff.net.0.proj": ("img_mlp.0", None), "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None), "ff_context.net.2": ("txt_mlp.2", None),
}
COMFY_SINGLE = {
    "attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3), "proj_out": ("linear2", None), "norm.linear": ("modulation.lin", None),
}
COMFY_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}


def bfl_parameter_shapes(h: int = HIDDEN, ctx: int = 16, pooled: int = 16, ch: int = 16,
                         layers: int = 1, singles: int = 1) -> dict[str, tuple[int, int]]:
    """Weight shapes of the BFL FLUX model (comfy/ldm/flux) for a config, written out from its
    layer definitions: mlp_ratio 4, 6-way double and 3-way single modulation."""
    mlp = 4 * h
    shapes = {"img_in": (h, ch), "txt_in": (h, ctx), "time_in.in_layer": (h, 256),
              "time_in.out_layer": (h, h), "vector_in.in_layer": (h, pooled),
              "vector_in.out_layer": (h, h), "guidance_in.in_layer": (h, 256),
              "guidance_in.out_layer": (h, h), "final_layer.linear": (ch, h),
              "final_layer.adaLN_modulation.1": (2 * h, h)}
    for i in range(layers):
        for s in ("img", "txt"):
            shapes |= {f"double_blocks.{i}.{s}_attn.qkv": (3 * h, h),
                       f"double_blocks.{i}.{s}_attn.proj": (h, h),
                       f"double_blocks.{i}.{s}_mod.lin": (6 * h, h),
                       f"double_blocks.{i}.{s}_mlp.0": (mlp, h),
                       f"double_blocks.{i}.{s}_mlp.2": (h, mlp)}
    for i in range(singles):
        shapes |= {f"single_blocks.{i}.linear1": (3 * h + mlp, h),
                   f"single_blocks.{i}.linear2": (h, h + mlp),
                   f"single_blocks.{i}.modulation.lin": (3 * h, h)}
    return shapes


def comfy_key_map(h: int = HIDDEN, layers: int = 1, singles: int = 1) -> dict:
    """The FLUX entries of comfy.lora.model_lora_keys_unet for 'transformer.' diffusers keys:
    the target weight, or (weight, (dim, offset, size)) for a fused slice."""
    sizes = [h, h, h, 4 * h]
    km = {}
    for i in range(layers):
        for d, (bfl, idx) in COMFY_DOUBLE.items():
            tgt = f"diffusion_model.double_blocks.{i}.{bfl}.weight"
            km[f"transformer.transformer_blocks.{i}.{d}"] = \
                tgt if idx is None else (tgt, (0, idx * h, h))
    for i in range(singles):
        for d, (bfl, idx) in COMFY_SINGLE.items():
            tgt = f"diffusion_model.single_blocks.{i}.{bfl}.weight"
            km[f"transformer.single_transformer_blocks.{i}.{d}"] = \
                tgt if idx is None else (tgt, (0, idx * h, sizes[idx]))
    for d, bfl in COMFY_TOP.items():
        km[f"transformer.{d}"] = f"diffusion_model.{bfl}.weight"
    return km


# ----------------------------------------------------------------------------- file writers

def diffusers_keys(layers, prefix="transformer.", adapter="", alpha=True):
    sd = {}
    a = f".{adapter}" if adapter else ""
    for m, (A, B) in layers.items():
        sd[f"{prefix}{m}.lora_A{a}.weight"] = A
        sd[f"{prefix}{m}.lora_B{a}.weight"] = B
        if alpha:
            sd[f"{prefix}{m}.alpha"] = torch.tensor(ALPHA)
    return sd


def kohya_diffusers_names(layers, prefix="lora_unet_"):
    sd = {}
    for m, (A, B) in layers.items():
        k = prefix + m.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": A, f"{k}.lora_up.weight": B, f"{k}.alpha": torch.tensor(ALPHA)}
    return sd


def bfl_fused(layers):
    """The same LoRA on BFL layers: fused q/k/v (and linear1) stored per slice, A stacked and
    B block-diagonal (kohya's split-qkv layout), alpha scaled so alpha / rank is unchanged;
    norm_out rows in BFL (shift, scale) order. Returns BFL name -> (A, B, alpha)."""
    out, fused = {}, {}
    for m, (A, B) in layers.items():
        if m.startswith("transformer_blocks."):
            i, rest = m.split(".")[1], m.split(".", 2)[2]
            bfl, idx = COMFY_DOUBLE[rest]
            name = f"double_blocks.{i}.{bfl}"
        elif m.startswith("single_transformer_blocks."):
            i, rest = m.split(".")[1], m.split(".", 2)[2]
            bfl, idx = COMFY_SINGLE[rest]
            name = f"single_blocks.{i}.{bfl}"
        else:
            name, idx = COMFY_TOP[m], None
            if m == "norm_out.linear":
                scale, shift = B.chunk(2)
                B = torch.cat([shift, scale])
        if idx is None:
            out[name] = (A, B, ALPHA)
        else:
            fused.setdefault(name, {})[idx] = (A, B)
    for name, parts in fused.items():
        parts = [parts[i] for i in sorted(parts)]
        A = torch.cat([p[0] for p in parts])
        B = torch.block_diag(*[p[1] for p in parts])
        out[name] = (A, B, ALPHA * len(parts))
    return out


def kohya_bfl_names(layers):
    sd = {}
    for name, (A, B, alpha) in bfl_fused(layers).items():
        k = "lora_unet_" + name.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": A, f"{k}.lora_up.weight": B, f"{k}.alpha": torch.tensor(alpha)}
    return sd


def bfl_dotted(layers):
    sd = {}
    for name, (A, B, alpha) in bfl_fused(layers).items():
        k = "diffusion_model." + name
        sd |= {f"{k}.lora_A.weight": A, f"{k}.lora_B.weight": B, f"{k}.alpha": torch.tensor(alpha)}
    return sd
