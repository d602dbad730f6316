"""Core interop through the ComfyUI stub, with and without each newer core feature: the
dynamic-VRAM patcher, LoRA metadata passed on, node classes without instance state."""
from __future__ import annotations

import pytest
import torch
from lora_formats import ALPHA, RANK, comfy_key_map, kohya_bfl_names
from safetensors import safe_open
from safetensors.torch import save_file
from science_t2i.nodes import _comfy
from tiny_lora import peft_lora, tiny_lora_transformer


@pytest.mark.parametrize("newer", [False, True])
def test_models_are_wrapped_and_loaded_as_core_does(request, newer):
    stub = request.getfixturevalue("comfy_newer" if newer else "comfy")
    import comfy.model_patcher as mp
    handle = _comfy.wrap_model(torch.nn.Linear(2, 2), torch.device("cpu"))
    expected = mp.ModelPatcherDynamic if newer else mp.ModelPatcher
    assert type(handle) is expected and _comfy.is_dynamic(handle) is newer
    _comfy.load_to_device(handle)
    assert stub.loaded == [handle]                         # loaded once
    assert stub.loaded_many == ([[handle]] if newer else [])   # through load_models_gpu


def test_core_model_patcher_is_looked_up_at_each_wrap(comfy_newer):
    """Core points CoreModelPatcher at the dynamic patcher after the pack was imported."""
    import comfy.model_patcher as mp
    mp.CoreModelPatcher = None                    # a core that has not switched (yet)
    assert type(_comfy.wrap_model(torch.nn.Linear(2, 2), torch.device("cpu"))) is mp.ModelPatcher
    mp.CoreModelPatcher = mp.ModelPatcherDynamic
    assert _comfy.is_dynamic(_comfy.wrap_model(torch.nn.Linear(2, 2), torch.device("cpu")))


def test_sciscore_loader_uses_the_dynamic_patcher(comfy_newer, models_dir):
    from science_t2i.nodes.sciscore import load_sciscore
    from tiny_clip import build_tiny_clip
    build_tiny_clip(comfy_newer.models_dir / "sciscore" / "tiny", image_size=32)
    comfy_newer.folder_paths.folder_names_and_paths["sciscore"] = (
        [str(comfy_newer.models_dir / "sciscore")], {""})
    scorer = load_sciscore("tiny", device="cpu")
    handle = next((v for v in vars(scorer).values() if hasattr(v, "load_device")), None)
    assert handle is not None and _comfy.is_dynamic(handle)


def _lora_file(stub, metadata):
    d = stub.models_dir / "loras"
    d.mkdir(exist_ok=True)
    layers = peft_lora(tiny_lora_transformer(rank=RANK, alpha=ALPHA))
    save_file({k: v.contiguous() for k, v in kohya_bfl_names(layers).items()},
              str(d / "science.safetensors"), metadata=metadata)
    return d / "science.safetensors"


@pytest.mark.parametrize("newer", [False, True])
def test_lora_metadata_goes_to_cores_that_take_it(request, newer):
    stub = request.getfixturevalue("comfy_newer" if newer else "comfy")
    from comfy.model_patcher import ModelPatcher
    from science_t2i.nodes.lora.node_classes import LoraLoaderNode
    stub.lora.key_map = comfy_key_map()
    path = _lora_file(stub, {"ss_network_alpha": "8", "modelspec.title": "science"})
    model = ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    patched, _ = LoraLoaderNode().load(model, "science.safetensors", 1.0)
    with safe_open(str(path), "pt") as f:              # the file's own header, read apart
        expected = f.metadata()
    if newer:
        assert patched.attachments == {"lora_metadata": expected}
    else:
        assert not hasattr(patched, "attachments") and len(stub.lora_calls) == 1


def test_lora_loader_keeps_no_instance_state(comfy):
    """Two node instances share one read of the file; a file rewritten in place is read
    again (its size and time change)."""
    from comfy.model_patcher import ModelPatcher
    from science_t2i.nodes.lora import node_classes
    comfy.lora.key_map = comfy_key_map()
    path = _lora_file(comfy, {"v": "1"})
    assert vars(node_classes.LoraLoaderNode()) == {}
    node_classes._read_cached.cache_clear()
    model = ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    node_classes.LoraLoaderNode().load(model, "science.safetensors", 1.0)
    node_classes.LoraLoaderNode().load(model, "science.safetensors", 0.5)
    assert node_classes._read_cached.cache_info().misses == 1
    import os
    _lora_file(comfy, {"v": "2"})
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    node_classes.LoraLoaderNode().load(model, "science.safetensors", 1.0)
    assert node_classes._read_cached.cache_info().misses == 2
