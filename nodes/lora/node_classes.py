"""The Science LoRA Loader node."""
from __future__ import annotations

import functools
from typing import Any

from .. import _comfy
from ..errors import ScienceT2IError
from .apply import apply_lora
from .files import LoraFile, read_lora


def lora_names() -> list[str]:
    return _comfy.list_models("loras", extensions=(".safetensors",), include_dirs=False)


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> LoraFile:
    # keyed by the file's stamp, so a LoRA rewritten in place is read again; module-level
    # because node instances hold no state (V3 nodes cannot, and core may make new ones)
    return read_lora(path)


class LoraLoaderNode:
    """MODEL + FLUX LoRA (any key format) -> patched MODEL and a report of what matched."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "lora_name": (lora_names(), {"tooltip": "A FLUX LoRA from models/loras (.safetensors)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    FUNCTION = "load"
    CATEGORY = "Science-T2I/LoRA"
    DESCRIPTION = ("Applies a FLUX LoRA saved by diffusers, peft, kohya or ComfyUI-style trainers "
                   "and reports the detected format, rank and how many tensors matched the model.")

    def load(self, model: Any, lora_name: str, strength: float) -> tuple[Any, str]:
        _comfy.require_comfy("Science LoRA Loader")
        path = _comfy.resolve_model("loras", lora_name)
        if path is None:
            raise ScienceT2IError(
                f"LoRA {lora_name!r} not found in {[str(p) for p in _comfy.folder_paths_for('loras')]}.")
        st = path.stat()
        return apply_lora(model, _read_cached(str(path), st.st_mtime_ns, st.st_size), strength)


NODE_CLASS_MAPPINGS = {"ScienceT2I_LoraLoader": LoraLoaderNode}
NODE_DISPLAY_NAME_MAPPINGS = {"ScienceT2I_LoraLoader": "Science LoRA Loader"}
