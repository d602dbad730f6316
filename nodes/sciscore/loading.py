"""Finding and loading SciScore / CLIP checkpoints, with clear errors for every bad case.

Two on-disk formats:
- a transformers CLIPModel directory in the official release layout (config.json,
  *.safetensors, tokenizer and preprocessor files), as ``Jialuo21/SciScore`` ships it;
- an open_clip checkpoint (.safetensors), by default ViT-H-14, with an optional
  ``open_clip_config.json`` beside it (what open_clip hub releases ship).

A hub id that is not on disk is downloaded into models/sciscore/<repo name>/ on first use.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import _comfy
from ..core import hub
from ..core.files import (PICKLE_SUFFIXES, load_safetensors, load_torch_checkpoint,
                          safetensors_metadata)
from ..errors import ScienceT2IError
from .model import SciScoreModel
from .preprocess import CLIP_MEAN, CLIP_STD

log = logging.getLogger("science_t2i")

DEFAULT_SCISCORE = "Jialuo21/SciScore"
OPEN_CLIP_DEFAULT_ARCH = "ViT-H-14"
# What a transformers CLIP folder needs from a hub repo (skips duplicate pickle weights).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def download_command(repo_id: str, folder: Path) -> str:
    return hub.download_command(repo_id, folder, HUB_PATTERNS)


def resolve_source(model: str | os.PathLike) -> Path:
    """A model name (in models/sciscore), any path, or a hub id -> a local path.

    A hub id that is not on disk yet is downloaded into models/sciscore/<repo name>/.
    """
    name = os.fspath(model).strip()
    if not name:
        raise ScienceT2IError("no SciScore model given: pass a folder in models/sciscore, a "
                              f"path, or a hub id such as {DEFAULT_SCISCORE}.")
    found = hub.local_model("sciscore", name)
    if found is not None:
        return found
    if hub.looks_like_hub_id(name):
        return download_from_hub(name, hub.repo_folder("sciscore", name))
    searched = ", ".join(str(p) for p in _comfy.folder_paths_for("sciscore"))
    raise ScienceT2IError(
        f"SciScore model {name!r} not found: it is neither an existing path nor a folder in "
        f"{searched}. Put the model folder there, or fetch it with "
        f"`{download_command(DEFAULT_SCISCORE, _comfy.default_folder('sciscore') / 'SciScore')}`.")


def download_from_hub(repo_id: str, target: Path) -> Path:
    """Download a hub repo into ``target`` (atomically; nothing is created offline)."""
    return hub.download_repo(repo_id, target, HUB_PATTERNS, "SciScore model")


# ----------------------------------------------------------------------------- transformers

def _check_safetensors(files: list[Path]) -> None:
    for f in files:
        safetensors_metadata(f)  # header readable
        _check_size(f)


def _check_size(path: Path) -> None:
    """A truncated download keeps a valid header; compare the data size with the header's."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ScienceT2IError(f"{path} is empty or truncated: download it again.")
        n = int.from_bytes(raw, "little")
        try:
            header = json.loads(fh.read(n))
        except Exception as exc:
            raise ScienceT2IError(f"{path} has a corrupt safetensors header: download it "
                                  "again.") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
              default=0)
    if path.stat().st_size < 8 + n + end:
        raise ScienceT2IError(
            f"{path} is truncated ({path.stat().st_size} bytes, the header describes "
            f"{8 + n + end}): the download was interrupted; delete it and download it again.")


# PIL's resampling filter numbers (as preprocessor_config.json stores them) -> pil_resample's
PIL_RESAMPLE = {3: "bicubic", 2: "bilinear"}


def read_preprocessor_config(folder: Path, image_size: int) -> dict[str, Any]:
    """size / crop_size / mean / std / rescale_factor / resample from preprocessor_config.json
    (CLIP defaults if absent)."""
    path = folder / "preprocessor_config.json"
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except Exception as exc:
            raise ScienceT2IError(f"{path} is not valid JSON ({exc}); download it again.") from exc
    else:
        log.warning("%s has no preprocessor_config.json; using CLIP's defaults "
                    "(%d px, OpenAI mean/std)", folder, image_size)

    def edge(v: Any, key: str) -> int | None:
        if isinstance(v, int):
            return v
        if isinstance(v, dict):
            return v.get(key) or v.get("height")
        return None

    size = edge(raw.get("size"), "shortest_edge") or image_size
    crop = edge(raw.get("crop_size"), "height") or size
    resample = PIL_RESAMPLE.get(raw.get("resample", 3))
    if resample is None:
        raise ScienceT2IError(
            f"{path}: resample={raw.get('resample')!r} is not supported; SciScore "
            "preprocessing reproduces PIL's bicubic (3) or bilinear (2).")
    return {"size": int(size), "crop_size": int(crop),
            "image_mean": [float(v) for v in raw.get("image_mean", CLIP_MEAN)],
            "image_std": [float(v) for v in raw.get("image_std", CLIP_STD)],
            "rescale_factor": float(raw.get("rescale_factor", 1 / 255)),
            "resample": resample, "raw": raw}


def load_clip_directory(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        attn_implementation: str = "sdpa") -> tuple[Any, Any, dict[str, Any]]:
    """A transformers CLIP folder -> (CLIPModel in eval mode on CPU, tokenizer, image config).

    The image config holds ``size``, ``crop_size``, ``image_mean``, ``image_std`` (and the
    file's ``raw`` dict). Pickle weights load only with ``weights_only=True``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ScienceT2IError(f"SciScore folder not found: {folder}. "
                              f"Fetch it with `{download_command(DEFAULT_SCISCORE, folder)}`.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ScienceT2IError(
            f"{folder} has no config.json, so it is not a transformers CLIP folder. It needs "
            "config.json, model.safetensors, tokenizer and preprocessor files, as "
            f"`{download_command(DEFAULT_SCISCORE, folder)}` fetches them.")
    try:
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ScienceT2IError(f"{config_path} is not valid JSON ({exc}).") from exc
    model_type = config_dict.get("model_type")
    if model_type != "clip":
        raise ScienceT2IError(
            f"{config_path} describes a {model_type!r} model, not a CLIP model "
            "(model_type 'clip'); SciScore needs a CLIP checkpoint such as "
            f"{DEFAULT_SCISCORE}.")

    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    config = CLIPConfig.from_pretrained(str(folder))
    if safetensors:
        _check_safetensors(safetensors)
        try:
            model = CLIPModel.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                              attn_implementation=attn_implementation)
        except Exception as exc:
            raise ScienceT2IError(
                f"could not load the CLIP weights in {folder} ({type(exc).__name__}: {exc}); "
                "the files may not match config.json or be incomplete: download them "
                "again.") from exc
    elif pickles:
        state = load_torch_checkpoint(pickles[0])  # refuses anything but plain tensors
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model = _from_state_dict(CLIPModel, config, state, pickles[0], attn_implementation)
        model = model.to(dtype)
    else:
        raise ScienceT2IError(
            f"{folder} has a config.json but no weights (*.safetensors): the download is "
            f"incomplete. Fetch them with `{download_command(DEFAULT_SCISCORE, folder)}`.")
    model.eval().requires_grad_(False)
    has_vocab = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
    try:
        if not has_vocab:  # transformers would quietly build a useless 3-token tokenizer
            raise FileNotFoundError("no tokenizer.json, vocab.json or merges.txt")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise ScienceT2IError(
            f"could not load the tokenizer in {folder} ({type(exc).__name__}: {exc}); the "
            "folder needs tokenizer.json or vocab.json + merges.txt (and "
            "tokenizer_config.json) from the model's release.") from exc
    image_cfg = read_preprocessor_config(folder, config.vision_config.image_size)
    return model, tokenizer, image_cfg


def _from_state_dict(cls: Any, config: Any, state: Any, path: Path, attn: str) -> Any:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScienceT2IError(f"{path} does not hold a plain state dict of tensors.")
    config._attn_implementation = attn
    model = cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ScienceT2IError(
            f"{path} does not match config.json: {len(missing)} missing and "
            f"{len(unexpected)} unexpected weights (e.g. {(missing + unexpected)[:3]}).")
    return model


# ----------------------------------------------------------------------------- open_clip

@dataclass
class OpenClipParts:
    model: Any
    tokenizer: Any
    size: int
    mean: list[float]
    std: list[float]


def load_open_clip_file(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        arch: str | None = None) -> OpenClipParts:
    """An open_clip checkpoint (.safetensors) -> model, tokenizer and preprocessing.

    The architecture comes from ``open_clip_config.json`` beside the file (open_clip's hub
    format), else from ``arch``, the file's ``open_clip_arch`` metadata, or ViT-H-14.
    """
    import open_clip
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        state = load_torch_checkpoint(path)
    elif path.suffix != ".safetensors":
        raise ScienceT2IError(f"{path}: expected an open_clip .safetensors checkpoint.")
    else:
        _check_size(path)
        state = load_safetensors(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        raise ScienceT2IError(
            f"{path} is not an open_clip CLIP checkpoint (no visual.conv1 / token_embedding "
            "weights). For a transformers CLIP give its folder (with config.json) instead.")
    config_file = path.parent / "open_clip_config.json"
    if config_file.is_file():
        name = f"local-dir:{path.parent}"
    else:
        meta = safetensors_metadata(path) if path.suffix == ".safetensors" else {}
        name = arch or meta.get("open_clip_arch") or OPEN_CLIP_DEFAULT_ARCH
    try:
        model = open_clip.create_model(name, load_weights=False, device="cpu")
    except Exception as exc:
        raise ScienceT2IError(f"open_clip cannot build {name!r} for {path} ({exc}).") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScienceT2IError(
            f"{path} does not fit open_clip's {name!r} architecture "
            f"({str(exc).splitlines()[0]}); put its open_clip_config.json beside it.") from exc
    model = model.to(dtype).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre.get("size", 224)
    size = size if isinstance(size, int) else int(size[0])
    return OpenClipParts(model, tokenizer, size, list(pre.get("mean", CLIP_MEAN)),
                         list(pre.get("std", CLIP_STD)))


# ----------------------------------------------------------------------------- the scorer

def load_sciscore(model: str | Path = DEFAULT_SCISCORE,
                  device: str | torch.device | None = None, dtype: str = "auto",
                  batch_size: int = 16, open_clip_arch: str | None = None,
                  compile: bool = False, onednn: bool | str = "auto",
                  preprocess: str = "exact") -> SciScoreModel:
    """Load SciScore from a name in models/sciscore, any path, or a hub id.

    A transformers CLIP folder or an open_clip .safetensors file (ViT-H-14 unless an
    ``open_clip_config.json`` beside it or ``open_clip_arch`` says otherwise). ``device``:
    None = ComfyUI's (or CUDA when available); ``dtype``: auto (fp16 on CUDA, fp32 on CPU),
    fp32, fp16 or bf16. ``compile``: run the image tower through ``torch.compile`` (fused
    kernels; the first batch of each new shape pays the compilation, and scoring falls back
    to eager if compilation fails). ``onednn``: with fp32 weights on CPU, "auto" runs both
    towers through oneDNN's fused kernels (same maths) where that is faster than PyTorch's
    own forward (AVX-512 and a one-time measurement, see ``SciScoreModel.cpu_path``), True
    always, False never.
    ``preprocess``: "exact" gives the model the pixels its own processor (transformers'
    CLIPImageProcessor, or open_clip's transform) computes from the 8-bit image, bit for bit;
    "fast" one float bicubic resize (pixels a few 1/255 steps off, see README).
    """
    path = resolve_source(model)
    dev = _comfy.torch_device() if device in (None, "", "auto") else torch.device(device)
    try:
        torch_dtype = _comfy.pick_dtype(dev, dtype)
    except ValueError as exc:
        raise ScienceT2IError(str(exc)) from exc
    name = os.fspath(model)
    if path.is_dir():
        clip, tokenizer, cfg = load_clip_directory(path, dtype=torch_dtype)
        log.info("SciScore %s loaded from %s (%s, %s)", name, path, dev, torch_dtype)
        return SciScoreModel.from_clip(clip, tokenizer, cfg, name=name, device=dev,
                                       batch_size=batch_size, compile=compile, onednn=onednn,
                                       preprocess=preprocess)
    parts = load_open_clip_file(path, dtype=torch_dtype, arch=open_clip_arch)
    log.info("SciScore %s loaded from %s (%s, %s)", name, path, dev, torch_dtype)
    return SciScoreModel.from_open_clip(parts, name=name, device=dev, dtype=torch_dtype,
                                        batch_size=batch_size, compile=compile, onednn=onednn,
                                        preprocess=preprocess)
