"""The one bridge to ComfyUI.

Every other module of the pack talks to ComfyUI only through the functions here, and each
function has a standalone fallback, so the package also works headless (CLI, training, tests):

- model folders: ComfyUI's folder_paths when present; otherwise the models dir from
  ``set_models_dir`` (the CLI's ``--models-dir``), ``$SCIENCE_T2I_MODELS``, or ``./models``;
- devices and model offloading: comfy.model_management + comfy.model_patcher.ModelPatcher,
  or plain torch;
- progress: comfy.utils.ProgressBar, or tqdm;
- interruption: comfy.model_management's interrupt flag, or nothing.

Tests replace ComfyUI with stub modules and call ``reload_bridge()``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

log = logging.getLogger("science_t2i")

# Model folders the pack registers: name -> (subdirectory of models/, extensions).
# "folder" entries hold directories (Hugging Face layout) as well as files.
MODEL_FOLDERS: dict[str, tuple[str, set[str]]] = {
    "sciscore": ("sciscore", {".safetensors", "folder"}),
    "grounding-dino": ("grounding-dino", {".safetensors", ".pth", "folder"}),
    "LLM": ("LLM", {"folder"}),
    "vlm": ("vlm", {"folder"}),  # multimodal judges (image-text-to-text models)
    "bert-base-uncased": ("bert-base-uncased", {"folder"}),  # GroundingDINO .pth text encoder
}
# Folders that belong to ComfyUI itself; standalone we mirror its layout.
COMFY_FOLDERS = {"loras": "loras", "diffusion_models": "diffusion_models", "vae": "vae",
                 "text_encoders": "text_encoders", "checkpoints": "checkpoints",
                 # the older names ComfyUI still reads (unet/ for diffusion models, clip/)
                 "unet": "unet", "clip": "clip"}

folder_paths: Any = None
model_management: Any = None
comfy_utils: Any = None
model_patcher: Any = None
comfy_sd: Any = None
comfy_lora: Any = None
IN_COMFY = False

_models_dir_override: Path | None = None


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken partial ComfyUI install
        return None


def reload_bridge() -> None:
    """(Re)detect ComfyUI. Called at import; tests call it after installing stubs."""
    global folder_paths, model_management, comfy_utils, model_patcher, comfy_sd, comfy_lora
    global IN_COMFY
    folder_paths = _try_import("folder_paths")
    model_management = _try_import("comfy.model_management") if folder_paths else None
    IN_COMFY = folder_paths is not None and model_management is not None
    comfy_utils = _try_import("comfy.utils") if IN_COMFY else None
    model_patcher = _try_import("comfy.model_patcher") if IN_COMFY else None
    comfy_sd = _try_import("comfy.sd") if IN_COMFY else None
    comfy_lora = _try_import("comfy.lora") if IN_COMFY else None
    if IN_COMFY:
        _register_folders()


def _register_folders() -> None:
    base = Path(folder_paths.models_dir)
    for name, (sub, exts) in MODEL_FOLDERS.items():
        path = str(base / sub)
        if name in folder_paths.folder_names_and_paths:
            paths, old = folder_paths.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            folder_paths.folder_names_and_paths[name] = (paths, set(old) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(exts))


# ----------------------------------------------------------------------------- model folders

def set_models_dir(path: str | os.PathLike | None) -> None:
    """Standalone only: the models directory (CLI flag ``--models-dir``)."""
    global _models_dir_override
    _models_dir_override = Path(path).expanduser().resolve() if path else None


def models_dir() -> Path:
    if IN_COMFY:
        return Path(folder_paths.models_dir)
    if _models_dir_override is not None:
        return _models_dir_override
    env = os.environ.get("SCIENCE_T2I_MODELS")
    return Path(env).expanduser().resolve() if env else Path.cwd() / "models"


def _subdir(kind: str) -> str:
    if kind in MODEL_FOLDERS:
        return MODEL_FOLDERS[kind][0]
    if kind in COMFY_FOLDERS:
        return COMFY_FOLDERS[kind]
    raise KeyError(f"unknown model folder kind {kind!r}")


def folder_paths_for(kind: str) -> list[Path]:
    """Every directory searched for models of ``kind``, the default (writable) one first."""
    if IN_COMFY:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            pass
    return [models_dir() / _subdir(kind)]


def comfyui_root() -> Path | None:
    """The folder of the ComfyUI this process runs in (where ``comfy/`` is), or None."""
    comfy = _try_import("comfy") if IN_COMFY else None
    file = getattr(comfy, "__file__", None)
    return Path(file).parent.parent if file else None


def output_directory() -> Path:
    """Where saved images go: ComfyUI's output folder, else $SCIENCE_T2I_OUTPUT or ./output."""
    if IN_COMFY:
        return Path(folder_paths.get_output_directory())
    env = os.environ.get("SCIENCE_T2I_OUTPUT")
    return Path(env).expanduser().resolve() if env else Path.cwd() / "output"


def input_directory() -> Path:
    """Where users put input files: ComfyUI's input folder, else the current folder."""
    if IN_COMFY:
        return Path(folder_paths.get_input_directory())
    return Path.cwd()


def default_folder(kind: str) -> Path:
    return folder_paths_for(kind)[0]


def list_models(kind: str, extensions: Iterable[str] = (".safetensors",),
                include_dirs: bool = True) -> list[str]:
    """Names (relative to their model folder) of files with ``extensions`` and, with
    ``include_dirs``, of directories holding a config.json (Hugging Face layout)."""
    exts = tuple(e.lower() for e in extensions)
    names: set[str] = set()
    for root in folder_paths_for(kind):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and path.name.lower().endswith(exts):
                names.add(rel)
            elif include_dirs and path.is_dir() and (path / "config.json").is_file():
                names.add(rel)
    return sorted(names)


def resolve_model(kind: str, name: str) -> Path | None:
    """A model name from a folder list, or any existing path; None if nothing matches."""
    cand = Path(name).expanduser()
    if cand.is_absolute() or cand.exists():
        return cand if cand.exists() else None
    for root in folder_paths_for(kind):
        path = root / name
        if path.exists():
            return path
    return None


# ----------------------------------------------------------------------------- devices

def torch_device() -> torch.device:
    if IN_COMFY:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if IN_COMFY:
        return model_management.text_encoder_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    if IN_COMFY:
        return model_management.intermediate_device()
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """fp16 on CUDA by default, fp32 on CPU (half precision is slow or unsupported there)."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if requested != "auto":
        if requested not in table:
            raise ValueError(f"unknown dtype {requested!r}; use auto, fp32, fp16 or bf16")
        if device.type == "cpu" and requested != "fp32":
            log.warning("%s requested on CPU; using fp32 (half precision is very slow on CPU)",
                        requested)
            return torch.float32
        return table[requested]
    if device.type == "cuda":
        return torch.float16
    return torch.float32


# ----------------------------------------------------------------------------- model management

class StandaloneHolder:
    """What ModelPatcher gives us, for use without ComfyUI: move to the device and back."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device,
                 offload_device: torch.device):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device

    def model_size(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


class ManagedModule(torch.nn.Module):
    """The container ComfyUI's ModelPatcher manages. The patcher sets attributes such as
    ``device`` on its module, which transformers models expose as read-only properties, so it
    gets this plain holder and moves the real model inside it."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


def wrap_model(model: torch.nn.Module, load_device: torch.device,
               offload: torch.device | None = None) -> Any:
    """A handle ComfyUI's model management can load and offload (a ModelPatcher in ComfyUI)."""
    offload = offload if offload is not None else offload_device()
    if IN_COMFY and model_patcher is not None:
        holder = model if isinstance(model, ManagedModule) else ManagedModule(model)
        return patcher_class()(holder, load_device=load_device, offload_device=offload)
    return StandaloneHolder(model, load_device, offload)


def patcher_class() -> type:
    """The patcher core uses for its own models. Newer cores point ``CoreModelPatcher`` at
    their dynamic-VRAM patcher at start-up (so it is looked up at each call); one plain
    ``ModelPatcher`` among dynamic ones switches model management to its static mode, which
    can evict FLUX between sampling and scoring. Older cores have only ``ModelPatcher``."""
    return getattr(model_patcher, "CoreModelPatcher", None) or model_patcher.ModelPatcher


def is_dynamic(handle: Any) -> bool:
    """Whether core manages this handle with dynamic VRAM (never standalone)."""
    probe = getattr(handle, "is_dynamic", None)
    return bool(probe()) if callable(probe) else False


def load_to_device(handle: Any) -> None:
    """Make sure the wrapped model sits on its load device (ComfyUI may free other models).
    ``load_models_gpu`` is how core loads every patcher, dynamic ones included (they refuse
    to be patched directly); very old cores had only ``load_model_gpu``."""
    if IN_COMFY and not isinstance(handle, StandaloneHolder):
        load_many = getattr(model_management, "load_models_gpu", None)
        if load_many is not None:
            load_many([handle])
        else:
            model_management.load_model_gpu(handle)
    else:
        handle.model.to(handle.load_device)


def offload(handle: Any) -> None:
    """Move a wrapped model back to its offload device when it is not needed until its next
    use (standalone runs: training holds on the GPU only what the current phase uses);
    inside ComfyUI its model management decides."""
    if IN_COMFY and not isinstance(handle, StandaloneHolder):
        return
    if handle.load_device != handle.offload_device:
        handle.model.to(handle.offload_device)
        soft_empty_cache()


def soft_empty_cache() -> None:
    if IN_COMFY:
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- progress, interrupt

_quiet_depth = 0   # open quiet_progress() blocks


def progress_enabled() -> bool:
    """Whether the pack's own bars show: not inside quiet_progress(), and not turned off by
    the environment (SCIENCE_T2I_NO_PROGRESS=1)."""
    return _quiet_depth == 0 and os.environ.get("SCIENCE_T2I_NO_PROGRESS") != "1"


def _silence(library: str) -> Callable[[], None] | None:
    """Turn off one library's tqdm bars; returns what turns them back on (None: nothing to
    undo, or the library is not installed)."""
    try:
        if library == "huggingface_hub":
            from huggingface_hub import utils as hub
            was_off = hub.are_progress_bars_disabled()
            hub.disable_progress_bars()
            # enabling transformers' bars again enables the hub's too: restore this last
            return hub.disable_progress_bars if was_off else hub.enable_progress_bars
        logs = importlib.import_module(f"{library}.utils.logging")
    except ImportError:
        return None
    if not logs.is_progress_bar_enabled():
        return None
    logs.disable_progress_bar()
    return logs.enable_progress_bar


@contextlib.contextmanager
def quiet_progress(quiet: bool = True, libraries: Iterable[str] = ("huggingface_hub",
                                                                   "transformers")
                   ) -> Iterator[None]:
    """With ``quiet``, no progress bar inside the block: neither the pack's nor those of
    ``libraries`` (model loading and saving, downloads); each is restored afterwards."""
    global _quiet_depth
    if not quiet:
        yield
        return
    # the hub's state first, so it is restored last
    ordered = sorted(libraries, key=lambda name: name != "huggingface_hub")
    restores = [r for r in map(_silence, ordered) if r is not None]
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1
        for restore in reversed(restores):
            restore()


class Progress:
    """ComfyUI's ProgressBar inside ComfyUI (the node's bar in the UI), tqdm outside."""

    def __init__(self, total: int, desc: str = "", enabled: bool = True):
        self.total = total
        self._bar: Any = None
        self._tqdm: Any = None
        if IN_COMFY and comfy_utils is not None:
            self._bar = comfy_utils.ProgressBar(total)
        elif enabled:
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=total, desc=desc, leave=False,
                              disable=not progress_enabled())

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
        if self._tqdm is not None:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel; no-op standalone."""
    if IN_COMFY:
        model_management.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel, without raising (for waits on other processes, which
    then stop them and call ``check_interrupt``); False standalone."""
    if not IN_COMFY:
        return False
    probe = getattr(model_management, "processing_interrupted", None)
    return bool(probe()) if callable(probe) else False


# ----------------------------------------------------------------------------- LoRA

def lora_key_map(model: Any) -> dict[str, Any]:
    """ComfyUI's map from LoRA key names to the diffusion model's weights (comfy.lora)."""
    require_comfy("reading a MODEL's LoRA key map")
    return comfy_lora.model_lora_keys_unet(model.model, {})


def model_weight_shape(model: Any, name: str) -> tuple[int, ...] | None:
    """Shape of a MODEL's weight by its state-dict name (a key map target), None if absent."""
    getter = getattr(model, "get_model_object", None)
    try:
        if getter is not None:
            weight = getter(name)
        else:
            weight = model.model
            for part in name.split("."):
                weight = getattr(weight, part)
    except (AttributeError, KeyError, IndexError):
        return None
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else None


def load_lora_for_models(model: Any, clip: Any, lora: dict, strength_model: float,
                         strength_clip: float, metadata: dict | None = None) -> tuple[Any, Any]:
    """Core's LoRA patching; the file's metadata goes along where core takes it (newer cores
    attach it to the patched model as core's own LoRA loader does)."""
    require_comfy("applying a LoRA to a MODEL")
    fn = comfy_sd.load_lora_for_models
    if metadata is not None and _accepts(fn, "lora_metadata"):
        return fn(model, clip, lora, strength_model, strength_clip, lora_metadata=metadata)
    return fn(model, clip, lora, strength_model, strength_clip)


def _accepts(fn: Callable, name: str) -> bool:
    import inspect
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def require_comfy(what: str) -> None:
    if not IN_COMFY:
        from .errors import ScienceT2IError
        raise ScienceT2IError(
            f"{what} needs ComfyUI: run this node inside ComfyUI (the pack's folder in "
            "ComfyUI/custom_nodes/); headless code should use the diffusers path instead.")


reload_bridge()
