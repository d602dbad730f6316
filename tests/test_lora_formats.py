"""FLUX LoRA files in every supported key format normalise to the same diffusers tensors, and
the normalised layers land on real FLUX parameters under ComfyUI's (BFL) naming."""
from __future__ import annotations

import json

import pytest
import torch
from lora_formats import (ALPHA, RANK, bfl_dotted, bfl_parameter_shapes, comfy_key_map,
                          diffusers_keys, kohya_bfl_names, kohya_diffusers_names)
from safetensors.torch import save_file
from science_t2i.nodes.lora.files import read_lora
from tiny_lora import HIDDEN, TINY_FLUX, peft_lora, tiny_lora_transformer


@pytest.fixture(scope="module")
def peft_layers():
    return peft_lora(tiny_lora_transformer(rank=RANK, alpha=ALPHA))


FORMATS = {
    "diffusers": (lambda L: diffusers_keys(L), "diffusers"),
    "peft no prefix": (lambda L: diffusers_keys(L, prefix=""), "peft (no prefix)"),
    "base_model.model.": (lambda L: diffusers_keys(L, prefix="base_model.model."),
                          "peft (base_model.model.)"),
    "adapter names": (lambda L: diffusers_keys(L, prefix="", adapter="default"),
                      "peft (no prefix) + adapter names"),
    "transformer + adapter": (lambda L: diffusers_keys(L, adapter="default"),
                              "diffusers + adapter names"),
    "kohya diffusers names": (kohya_diffusers_names, "kohya (diffusers names)"),
    "OneTrainer": (lambda L: kohya_diffusers_names(L, "lora_transformer_"),
                   "OneTrainer (diffusers names)"),
    "kohya BFL names": (kohya_bfl_names, "kohya (BFL names)"),
    "BFL diffusion_model.": (bfl_dotted, "BFL (diffusion_model.)"),
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
    save_file(diffusers_keys(peft_layers, alpha=False), str(path),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    _assert_same_as_peft(read_lora(path), peft_layers)


def test_no_alpha_anywhere_means_scale_one(peft_layers, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(diffusers_keys(peft_layers, alpha=False), str(path))
    lf = read_lora(path)
    assert all(lf.alphas[m] == RANK for m in lf.modules)


def test_alpha_pattern_and_rslora_in_metadata(peft_layers, tmp_path):
    path = tmp_path / "lora.safetensors"
    meta = {"transformer.r": RANK, "transformer.lora_alpha": 2.0, "transformer.use_rslora": True,
            "transformer.alpha_pattern": {"^transformer_blocks.0.attn.to_q": 6.0}}
    save_file(diffusers_keys(peft_layers, alpha=False), str(path),
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
    sd = kohya_diffusers_names(peft_layers)
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
