"""The Science LoRA Loader node (with stub ComfyUI) and clear errors for bad LoRA files."""
from __future__ import annotations

import pickle

import pytest
import torch
from lora_formats import ALPHA, RANK, comfy_key_map, kohya_bfl_names
from safetensors.torch import save_file
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.lora.files import read_lora
from science_t2i.nodes.lora.node_classes import LoraLoaderNode
from tiny_lora import peft_lora, tiny_lora_transformer


@pytest.fixture(scope="module")
def layers():
    return peft_lora(tiny_lora_transformer(rank=RANK, alpha=ALPHA))


@pytest.fixture
def stub_model(comfy):
    from comfy.model_patcher import ModelPatcher
    return ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))


def _put_lora(comfy, sd, name="science.safetensors"):
    d = comfy.models_dir / "loras"
    d.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / name))
    return name


def _report_numbers(report):
    line = next(l for l in report.splitlines() if l.startswith("tensors matched"))
    matched, unmatched = line.split(":", 1)[1].split(",")
    return int(matched), int(unmatched.split(":")[1])


def test_node_applies_all_layers_of_a_kohya_bfl_lora(comfy, stub_model, layers):
    comfy.lora.key_map = comfy_key_map()
    name = _put_lora(comfy, kohya_bfl_names(layers))
    assert name in LoraLoaderNode.INPUT_TYPES()["required"]["lora_name"][0]
    model, report = LoraLoaderNode().load(stub_model, name, 0.7)
    n = len(layers)  # 30 linear layers, 3 tensors each (A, B, alpha)
    assert _report_numbers(report) == (3 * n, 0)
    assert "format: kohya (BFL names)" in report and "rank: 4" in report
    (patch, strength, clip_strength), = comfy.lora_calls
    assert strength == 0.7 and clip_strength == 0.0
    assert set(patch) == {f"transformer.{m}.{s}" for m in layers
                          for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert set(patch) <= {f"{k}.{s}" for k in comfy.lora.key_map
                          for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert model is not stub_model and len(model.patches) == 3 * n


def test_report_counts_unmatched_layers(comfy, stub_model, layers):
    """A MODEL without single blocks (key map has only double blocks and top layers): the
    single-block layers are reported unmatched and not passed to ComfyUI."""
    full = comfy_key_map()
    comfy.lora.key_map = {k: v for k, v in full.items() if "single_transformer_blocks" not in k}
    n_single = sum(m.startswith("single_transformer_blocks.") for m in layers)
    assert n_single == 6
    name = _put_lora(comfy, {f"transformer.{m}.lora_{x}.weight": ab[i]
                             for m, ab in layers.items() for i, x in enumerate("AB")})
    _, report = LoraLoaderNode().load(stub_model, name, 1.0)
    assert _report_numbers(report) == (3 * (len(layers) - n_single), 3 * n_single)
    (patch, _, _), = comfy.lora_calls
    assert not any("single_transformer_blocks" in k for k in patch)


def test_zero_matches_raise(comfy, stub_model, layers):
    comfy.lora.key_map = {"lora_unet_down_blocks_0_attentions_0_proj_in": "diffusion_model.x"}
    name = _put_lora(comfy, {f"transformer.{m}.lora_{x}.weight": ab[i]
                             for m, ab in layers.items() for i, x in enumerate("AB")})
    with pytest.raises(ScienceT2IError, match="none of the 30 layers"):
        LoraLoaderNode().load(stub_model, name, 1.0)
    assert comfy.lora_calls == []


def test_strength_zero_reports_without_patching(comfy, stub_model, layers):
    comfy.lora.key_map = comfy_key_map()
    name = _put_lora(comfy, kohya_bfl_names(layers))
    model, report = LoraLoaderNode().load(stub_model, name, 0.0)
    assert model is stub_model and comfy.lora_calls == [] and "strength: 0" in report


def test_node_needs_comfyui(models_dir, layers):
    with pytest.raises(ScienceT2IError, match="needs ComfyUI"):
        LoraLoaderNode().load(object(), "x.safetensors", 1.0)


def test_node_is_registered():
    from science_t2i import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    assert NODE_CLASS_MAPPINGS["ScienceT2I_LoraLoader"] is LoraLoaderNode
    assert NODE_DISPLAY_NAME_MAPPINGS["ScienceT2I_LoraLoader"] == "Science LoRA Loader"
    assert LoraLoaderNode.CATEGORY == "Science-T2I/LoRA"


# ----------------------------------------------------------------------------- bad inputs

def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is not a model")
    with pytest.raises(ScienceT2IError, match="not a readable safetensors file"):
        read_lora(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScienceT2IError, match="not found"):
        read_lora(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", ["lora.pt", "renamed.safetensors"])
def test_pickle_files_are_refused(tmp_path, name):
    path = tmp_path / name
    torch.save({"transformer.x_embedder.lora_A.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ScienceT2IError, match="pickle"):
        read_lora(path)


def test_raw_pickle_is_refused(tmp_path):
    path = tmp_path / "raw.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ScienceT2IError, match="pickle"):
        read_lora(path)


def test_sdxl_lora_is_named(tmp_path):
    k = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "sdxl.safetensors"
    save_file({f"{k}.lora_down.weight": torch.randn(4, 640), f"{k}.lora_up.weight": torch.randn(640, 4),
               f"{k}.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(ScienceT2IError, match="SDXL"):
        read_lora(path)


def test_rank_mismatch(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"transformer.x_embedder.lora_A.weight": torch.randn(4, 16),
               "transformer.x_embedder.lora_B.weight": torch.randn(16, 3)}, str(path))
    with pytest.raises(ScienceT2IError, match="rank mismatch"):
        read_lora(path)


def test_nan_tensors(tmp_path):
    B = torch.randn(16, 4)
    B[2, 1] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({"transformer.x_embedder.lora_A.weight": torch.randn(4, 16),
               "transformer.x_embedder.lora_B.weight": B}, str(path))
    with pytest.raises(ScienceT2IError, match="NaN"):
        read_lora(path)


def test_missing_up_matrix(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({"lora_unet_img_in.lora_down.weight": torch.randn(4, 16)}, str(path))
    with pytest.raises(ScienceT2IError, match="no up/B matrix"):
        read_lora(path)


def test_unknown_keys_only(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.randn(2, 2)}, str(path))
    with pytest.raises(ScienceT2IError, match="no FLUX LoRA layers"):
        read_lora(path)


def test_wrong_fused_width(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 16),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(40, 4)}, str(path))
    with pytest.raises(ScienceT2IError, match="3 x 16"):
        read_lora(path)


def _model_with_weights(comfy, key_map, layers, wrong=None):
    """A MODEL whose diffusion_model holds weights of the shapes the LoRA layers need (fused
    targets as wide as their slices reach); ``wrong`` gets one more input column."""
    from comfy.model_patcher import ModelPatcher
    shapes: dict[str, list[int]] = {}
    for module, target in key_map.items():
        m = module.removeprefix("transformer.")
        if m not in layers:
            continue
        A, B = layers[m]
        name, piece = (target, None) if isinstance(target, str) else target
        out = B.shape[0] if piece is None else piece[1] + piece[2]
        cur = shapes.setdefault(name, [0, A.shape[1] + (1 if m == wrong else 0)])
        cur[0] = max(cur[0], out)
    root = torch.nn.Module()
    for name, (o, i) in shapes.items():
        node = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(torch.zeros(o, i)))
    return ModelPatcher(root, torch.device("cpu"), torch.device("cpu"))


def test_layers_whose_shapes_do_not_fit_the_model_are_not_matched(comfy, layers):
    comfy.lora.key_map = comfy_key_map()
    name = _put_lora(comfy, kohya_bfl_names(layers))
    # every shape fits: all matched, as without weights to compare
    _, report = LoraLoaderNode().load(_model_with_weights(comfy, comfy.lora.key_map,
                                                                 layers), name, 1.0)
    assert _report_numbers(report) == (3 * len(layers), 0)
    # one layer one column wider in the model: reported, not applied
    wrong = "proj_out"
    assert wrong in layers
    model = _model_with_weights(comfy, comfy.lora.key_map, layers, wrong=wrong)
    _, report = LoraLoaderNode().load(model, name, 1.0)
    assert _report_numbers(report) == (3 * (len(layers) - 1), 3)
    assert "1 do not fit its weight shapes" in report and f"transformer.{wrong} is" in report
    patch = comfy.lora_calls[-1][0]
    assert not any(k.startswith(f"transformer.{wrong}.") for k in patch)
    # nothing fits: an error that says why
    bad = {f"transformer.{m}.lora_{x}.weight": t for m, (A, B) in layers.items()
           for x, t in (("A", torch.randn(A.shape[0], A.shape[1] + 3)), ("B", B))}
    name = _put_lora(comfy, bad, "misfit.safetensors")
    with pytest.raises(ScienceT2IError, match="not its sizes"):
        LoraLoaderNode().load(_model_with_weights(comfy, comfy.lora.key_map, layers),
                                     name, 1.0)
