"""Stand-ins for the ComfyUI modules the bridge (nodes/_comfy.py) imports.

``install_comfy_stub(models_dir)`` puts fake ``folder_paths``, ``comfy.model_management``,
``comfy.utils``, ``comfy.model_patcher``, ``comfy.sd`` and ``comfy.lora`` into sys.modules,
with the same function names and behaviour the bridge relies on, and reloads the bridge, so
node classes run their ComfyUI code paths in tests. ``uninstall_comfy_stub()`` undoes it.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

STUB_NAMES = ["folder_paths", "comfy", "comfy.model_management", "comfy.utils",
              "comfy.model_patcher", "comfy.sd", "comfy.lora"]


class InterruptProcessingException(Exception):
    pass


def install_comfy_stub(models_dir: Path, newer: bool = False) -> types.SimpleNamespace:
    """``newer``: also what later cores added (``load_models_gpu``, the dynamic-VRAM patcher
    behind ``CoreModelPatcher``, LoRA metadata passed to ``load_lora_for_models``)."""
    state = types.SimpleNamespace(loaded=[], progress=[], interrupt=False, lora_calls=[],
                                  loaded_many=[])

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.supported_pt_extensions = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}
    fp.folder_names_and_paths = {
        "loras": ([str(models_dir / "loras")], fp.supported_pt_extensions),
    }

    def get_folder_paths(name):
        return fp.folder_names_and_paths[name][0][:]

    def get_filename_list(name):
        out = []
        for root in get_folder_paths(name):
            root = Path(root)
            if root.is_dir():
                out += [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        return sorted(out)

    def get_full_path(name, filename):
        for root in get_folder_paths(name):
            p = Path(root) / filename
            if p.exists():
                return str(p)
        return None

    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    fp.get_output_directory = lambda: str(models_dir.parent / "output")

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.text_encoder_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda force=False: None

    def load_model_gpu(patcher):
        state.loaded.append(patcher)
        patcher.model.to(patcher.load_device)
        # the real ModelPatcher records the device on the module it manages
        patcher.model.device = patcher.load_device

    def throw_exception_if_processing_interrupted():
        if state.interrupt:
            state.interrupt = False
            raise InterruptProcessingException()

    mm.load_model_gpu = load_model_gpu
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.processing_interrupted = lambda: state.interrupt

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0
            state.progress.append(self)

        def update(self, value):
            self.current = min(self.total, self.current + value)

        def update_absolute(self, value, total=None, preview=None):
            self.current = value

    utils.ProgressBar = ProgressBar

    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            self.patches = {}
            # as the real ModelPatcher: a module without ``device`` gets one assigned
            if not hasattr(model, "device"):
                model.device = offload_device
            model.model_loaded_weight_memory = 0

        def clone(self):
            n = ModelPatcher(self.model, self.load_device, self.offload_device)
            n.patches = dict(self.patches)
            return n

        def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
            added = []
            for k, v in patches.items():
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model))
                added.append(k)
            return added

        def model_size(self):
            return sum(p.numel() * p.element_size() for p in self.model.parameters())

    mp.ModelPatcher = ModelPatcher
    if newer:
        class ModelPatcherDynamic(ModelPatcher):
            def is_dynamic(self):
                return True

            def patch_model(self, *args, **kwargs):   # core: use load_models_gpu instead
                raise AssertionError("a dynamic patcher is loaded through load_models_gpu")

        def load_models_gpu(patchers, **kwargs):
            state.loaded_many.append(list(patchers))
            for patcher in patchers:
                load_model_gpu(patcher)

        mp.ModelPatcherDynamic = ModelPatcherDynamic
        mp.CoreModelPatcher = ModelPatcherDynamic   # what core's main.py sets at start-up
        mm.load_models_gpu = load_models_gpu

    sd = types.ModuleType("comfy.sd")
    lora = types.ModuleType("comfy.lora")
    lora.key_map = {}  # tests set the MODEL's key map here

    def model_lora_keys_unet(model, key_map=None):
        out = dict(key_map or {})
        out.update(lora.key_map)
        return out

    def load_lora_for_models(model, clip, lora_sd, strength_model, strength_clip):
        state.lora_calls.append((lora_sd, strength_model, strength_clip))
        new = model.clone() if model is not None else None
        if new is not None:
            new.add_patches({k: v for k, v in lora_sd.items()}, strength_model)
        return new, clip

    def load_lora_for_models_with_metadata(model, clip, lora_sd, strength_model, strength_clip,
                                           lora_metadata=None):
        new, clip = load_lora_for_models(model, clip, lora_sd, strength_model, strength_clip)
        if new is not None and lora_metadata is not None:
            new.attachments = {"lora_metadata": lora_metadata}   # core's set_attachments
        return new, clip

    lora.model_lora_keys_unet = model_lora_keys_unet
    sd.load_lora_for_models = load_lora_for_models_with_metadata if newer else load_lora_for_models

    comfy.model_management, comfy.utils, comfy.model_patcher = mm, utils, mp
    comfy.sd, comfy.lora = sd, lora
    for name, mod in [("folder_paths", fp), ("comfy", comfy), ("comfy.model_management", mm),
                      ("comfy.utils", utils), ("comfy.model_patcher", mp), ("comfy.sd", sd),
                      ("comfy.lora", lora)]:
        sys.modules[name] = mod
    from science_t2i.nodes import _comfy
    _comfy.reload_bridge()
    state.folder_paths, state.lora = fp, lora
    return state


def uninstall_comfy_stub() -> None:
    for name in STUB_NAMES:
        sys.modules.pop(name, None)
    from science_t2i.nodes import _comfy
    _comfy.reload_bridge()
