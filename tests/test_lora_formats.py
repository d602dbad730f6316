"""FLUX LoRA files in every supported key format normalise to the same diffusers tensors, and
the normalised layers land on real FLUX parameters under ComfyUI's (BFL) naming."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tiny_lora import HIDDEN, TINY_FLUX, peft_lora, tiny_lora_transformer

from science_t2i.nodes.lora import read_lora

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


@pytest.fixture(scope="module")
def peft_layers():
    return peft_lora(tiny_lora_transformer(rank=RANK, alpha=ALPHA))


# ----------------------------------------------------------------------------- file writers

def _diffusers_keys(layers, prefix="transformer.", adapter="", alpha=True):
    sd = {}
    a = f".{adapter}" if adapter else ""
    for m, (A, B) in layers.items():
        sd[f"{prefix}{m}.lora_A{a}.weight"] = A
        sd[f"{prefix}{m}.lora_B{a}.weight"] = B
        if alpha:
            sd[f"{prefix}{m}.alpha"] = torch.tensor(ALPHA)
    return sd


def _kohya_diffusers_names(layers, prefix="lora_unet_"):
    sd = {}
    for m, (A, B) in layers.items():
        k = prefix + m.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": A, f"{k}.lora_up.weight": B, f"{k}.alpha": torch.tensor(ALPHA)}
    return sd


def _bfl_fused(layers):
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


def _kohya_bfl_names(layers):
    sd = {}
    for name, (A, B, alpha) in _bfl_fused(layers).items():
        k = "lora_unet_" + name.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": A, f"{k}.lora_up.weight": B, f"{k}.alpha": torch.tensor(alpha)}
    return sd


def _bfl_dotted(layers):
    sd = {}
    for name, (A, B, alpha) in _bfl_fused(layers).items():
        k = "diffusion_model." + name
        sd |= {f"{k}.lora_A.weight": A, f"{k}.lora_B.weight": B, f"{k}.alpha": torch.tensor(alpha)}
    return sd


FORMATS = {
    "diffusers": (lambda L: _diffusers_keys(L), "diffusers"),
    "peft no prefix": (lambda L: _diffusers_keys(L, prefix=""), "peft (no prefix)"),
    "base_model.model.": (lambda L: _diffusers_keys(L, prefix="base_model.model."),
                          "peft (base_model.model.)"),
    "adapter names": (lambda L: _diffusers_keys(L, prefix="", adapter="default"),
                      "peft (no prefix) + adapter names"),
    "transformer + adapter": (lambda L: _diffusers_keys(L, adapter="default"),
                              "diffusers + adapter names"),
    "kohya diffusers names": (_kohya_diffusers_names, "kohya (diffusers names)"),
    "OneTrainer": (lambda L: _kohya_diffusers_names(L, "lora_transformer_"),
                   "OneTrainer (diffusers names)"),
    "kohya BFL names": (_kohya_bfl_names, "kohya (BFL names)"),
    "BFL diffusion_model.": (_bfl_dotted, "BFL (diffusion_model.)"),
}


def _assert_same_as_peft(lf, layers):
    assert set(lf.modules) == {f"transformer.{m}" for m in layers}
    for m, (A, B) in layers.items():
        name = f"transformer.{m}"
        torch.testing.assert_close(lf.tensors[f"{name}.lora_A.weight"], A, rtol=0, atol=0)
        torch.testing.assert_close(lf.tensors[f"{name}.lora_B.weight"], B, rtol=0, atol=0)
        assert lf.alphas[name] == pytest.approx(ALPHA)
        assert lf.tensors[f"{name}.alpha"].item() == pytest.approx(ALPHA)
        assert lf.ranks[name] == RANK


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_normalises_to_the_peft_tensors(fmt, peft_layers, tmp_path):
    build, label = FORMATS[fmt]
    path = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in build(peft_layers).items()}, str(path))
    lf = read_lora(path)
    assert lf.format == label
    assert lf.rank == RANK
    assert not lf.unrecognised and not lf.skipped
    _assert_same_as_peft(lf, peft_layers)


def test_diffusers_metadata_alpha_is_kept(peft_layers, tmp_path):
    """diffusers files carry alpha only in lora_adapter_metadata; it becomes the alpha tensor."""
    path = tmp_path / "pytorch_lora_weights.safetensors"
    meta = {"transformer.r": RANK, "transformer.lora_alpha": ALPHA,
            "transformer.target_modules": sorted(peft_layers)}
    save_file(_diffusers_keys(peft_layers, alpha=False), str(path),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    _assert_same_as_peft(read_lora(path), peft_layers)


def test_no_alpha_anywhere_means_scale_one(peft_layers, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(_diffusers_keys(peft_layers, alpha=False), str(path))
    lf = read_lora(path)
    assert all(lf.alphas[m] == RANK for m in lf.modules)


def test_alpha_pattern_and_rslora_in_metadata(peft_layers, tmp_path):
    path = tmp_path / "lora.safetensors"
    meta = {"transformer.r": RANK, "transformer.lora_alpha": 2.0, "transformer.use_rslora": True,
            "transformer.alpha_pattern": {"^transformer_blocks.0.attn.to_q": 6.0}}
    save_file(_diffusers_keys(peft_layers, alpha=False), str(path),
              metadata={"lora_adapter_metadata": json.dumps(meta)})
    lf = read_lora(path)
    # peft's rsLoRA scale is alpha / sqrt(r); as (alpha' / r) that is alpha' = alpha * sqrt(r)
    q, k = "transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k"
    assert lf.alphas[q] / RANK == pytest.approx(6.0 / RANK ** 0.5)
    assert lf.alphas[k] / RANK == pytest.approx(2.0 / RANK ** 0.5)
    # the pattern is anchored: the single block's to_q keeps the global alpha
    assert lf.alphas["transformer.single_transformer_blocks.0.attn.to_q"] / RANK == \
        pytest.approx(2.0 / RANK ** 0.5)


def test_bfl_fused_layers_with_a_shared_down_matrix(tmp_path):
    """A kohya LoRA trained on the fused BFL layers: every slice gets the shared A and its rows
    of B, so the slices ComfyUI patches add up to the fused layer's change."""
    torch.manual_seed(0)
    h, r, alpha, mlp = HIDDEN, 3, 5.0, 4 * HIDDEN
    fused = {"double_blocks.0.img_attn.qkv": (torch.randn(r, h), torch.randn(3 * h, r)),
             "single_blocks.0.linear1": (torch.randn(r, h), torch.randn(3 * h + mlp, r)),
             "final_layer.adaLN_modulation.1": (torch.randn(r, h), torch.randn(2 * h, r))}
    sd = {}
    for name, (A, B) in fused.items():
        k = "lora_unet_" + name.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": A, f"{k}.lora_up.weight": B, f"{k}.alpha": torch.tensor(alpha)}
    path = tmp_path / "kohya.safetensors"
    save_file(sd, str(path))
    lf = read_lora(path)
    assert lf.rank == r

    def bfl_delta(name):
        A, B = fused[name]
        return alpha / r * B @ A

    qkv = torch.cat([lf.delta(f"transformer.transformer_blocks.0.attn.to_{x}") for x in "qkv"])
    torch.testing.assert_close(qkv, bfl_delta("double_blocks.0.img_attn.qkv"))
    lin1 = torch.cat([lf.delta(f"transformer.single_transformer_blocks.0.{x}")
                      for x in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
    torch.testing.assert_close(lin1, bfl_delta("single_blocks.0.linear1"))
    # ComfyUI maps norm_out.linear onto adaLN_modulation through swap_scale_shift
    scale, shift = lf.delta("transformer.norm_out.linear").chunk(2)
    torch.testing.assert_close(torch.cat([shift, scale]), bfl_delta("final_layer.adaLN_modulation.1"))


def test_text_encoder_keys_are_skipped_and_reported(peft_layers, tmp_path):
    sd = _kohya_diffusers_names(peft_layers)
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.randn(4, 8)
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.randn(8, 4)
    path = tmp_path / "with_te.safetensors"
    save_file(sd, str(path))
    lf = read_lora(path)
    assert len(lf.skipped) == 2
    _assert_same_as_peft(lf, peft_layers)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_normalised_keys_map_to_real_flux_parameters(fmt, peft_layers, tmp_path):
    """Every normalised layer is a key of ComfyUI's FLUX key map, whose target is a real BFL
    parameter, and the LoRA's shapes fit the parameter (or its fused slice)."""
    build, _ = FORMATS[fmt]
    path = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in build(peft_layers).items()}, str(path))
    lf = read_lora(path)
    km, shapes = comfy_key_map(), bfl_parameter_shapes()
    assert len(lf.modules) == len(km)  # the tiny LoRA targets every linear layer
    for m in lf.modules:
        target = km[m]
        param, sl = (target, None) if isinstance(target, str) else target
        out_f, in_f = shapes[param.removeprefix("diffusion_model.").removesuffix(".weight")]
        A, B = lf.tensors[f"{m}.lora_A.weight"], lf.tensors[f"{m}.lora_B.weight"]
        assert A.shape[1] == in_f
        if sl is None:
            assert B.shape[0] == out_f
        else:
            dim, offset, size = sl
            assert dim == 0 and offset + size <= out_f and B.shape[0] == size


def test_bfl_shape_table_matches_the_tiny_diffusers_model():
    """The BFL shapes used above agree with the diffusers model through ComfyUI's table."""
    from tiny_lora import tiny_transformer
    t = tiny_transformer()
    assert TINY_FLUX["num_attention_heads"] * TINY_FLUX["attention_head_dim"] == HIDDEN
    shapes = bfl_parameter_shapes()
    linears = {n: m.weight.shape for n, m in t.named_modules() if isinstance(m, torch.nn.Linear)}
    for key, target in comfy_key_map().items():
        d = key.removeprefix("transformer.")
        param, sl = (target, None) if isinstance(target, str) else target
        out_f, in_f = shapes[param.removeprefix("diffusion_model.").removesuffix(".weight")]
        assert linears[d][1] == in_f
        assert linears[d][0] == (out_f if sl is None else sl[2])
