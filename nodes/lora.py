"""Science LoRAs: read FLUX LoRA files in any common key format, apply them to a ComfyUI MODEL
with a report of what matched, and write the LoRAs that training produces.

ComfyUI's own loader silently drops keys it cannot map, so a LoRA can "load" and change
nothing. Here every file is first converted to diffusers keys with the ``transformer.``
prefix (see ``lora_keys``), which ComfyUI's FLUX key map and diffusers both accept, and the
converted layers are counted against the MODEL's own key map before anything is applied.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import _comfy
from .digest import json_digest
from .errors import ScienceT2IError
from .files import PICKLE_SUFFIXES, load_safetensors, safetensors_metadata, save_safetensors_atomic
from .lora_keys import is_diffusers_module, normalise_state_dict

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # what diffusers' save_lora_weights writes
META_PREFIX = "science_t2i."


@dataclass
class LoraFile:
    """A FLUX LoRA converted to diffusers keys.

    ``tensors`` holds ``transformer.<module>.lora_A.weight`` [rank, in],
    ``...lora_B.weight`` [out, rank] and ``...alpha`` (scalar) for every layer: the weight
    change is ``(alpha / rank) * B @ A``, as ComfyUI and kohya define it.
    """
    path: Path
    format: str
    tensors: dict[str, torch.Tensor]
    alphas: dict[str, float]
    ranks: dict[str, int]
    metadata: dict[str, str]
    skipped: list[str] = field(default_factory=list)       # text-encoder keys (not applied)
    unrecognised: list[str] = field(default_factory=list)  # keys of no known FLUX layer

    @property
    def modules(self) -> list[str]:
        return list(self.ranks)

    @property
    def rank(self) -> int:
        """The most common rank (LoRAs may use other ranks for a few layers)."""
        return Counter(self.ranks.values()).most_common(1)[0][0]

    def rank_text(self) -> str:
        lo, hi = min(self.ranks.values()), max(self.ranks.values())
        return str(lo) if lo == hi else f"{self.rank} (layers range {lo}-{hi})"

    def delta(self, module: str) -> torch.Tensor:
        """The weight change of one layer, ``(alpha / rank) * B @ A`` in float32."""
        A = self.tensors[f"{module}.lora_A.weight"].float()
        B = self.tensors[f"{module}.lora_B.weight"].float()
        return (self.alphas[module] / A.shape[0]) * (B @ A)


# ----------------------------------------------------------------------------- reading

def read_lora(path: str | Path) -> LoraFile:
    """Read a FLUX LoRA (.safetensors) in any supported key format; see ``lora_keys``."""
    path = Path(path)
    if not path.is_file():
        raise ScienceT2IError(f"LoRA file not found: {path}. Put it in models/loras/.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_error(path)
    try:
        sd = load_safetensors(path)
    except ScienceT2IError:
        if _looks_like_pickle(path):
            raise _pickle_error(path) from None
        raise
    metadata = safetensors_metadata(path)
    if not sd:
        raise ScienceT2IError(f"{path.name} holds no tensors; it is not a LoRA.")
    default_alpha = _metadata_alpha(metadata)
    norm = normalise_state_dict(sd, default_alpha=default_alpha)
    return LoraFile(path=path, format=" + ".join(norm.formats), tensors=norm.tensors,
                    alphas=norm.alphas, ranks=norm.ranks, metadata=metadata,
                    skipped=norm.skipped, unrecognised=norm.unrecognised)


def _looks_like_pickle(path: Path) -> bool:
    """A zip (torch.save) or raw pickle header, checked only once safetensors refused the file."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _pickle_error(path: Path) -> ScienceT2IError:
    return ScienceT2IError(
        f"{path.name} is a pickle file; pickle files can run arbitrary code when loaded, so "
        "LoRAs are only read as .safetensors. Convert it in a trusted environment (load it and "
        "save with safetensors.torch.save_file) or download the .safetensors release.")


def _metadata_alpha(metadata: dict[str, str]):
    """Alpha per layer from diffusers' adapter metadata (the peft LoraConfig), if present.

    diffusers files carry no alpha tensors; their scale ``lora_alpha / r`` (or
    ``/ sqrt(r)`` with rsLoRA, per-layer ``alpha_pattern``) lives in this JSON, which ComfyUI's
    loader ignores. Converting it to alpha tensors keeps the trained scale.
    """
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ScienceT2IError(f"the file's {DIFFUSERS_METADATA_KEY} is not valid JSON ({exc}).") from exc
    # diffusers prefixes each config entry with the component name ("transformer.r").
    cfg = {k.removeprefix("transformer."): v for k, v in cfg.items()
           if not k.startswith(("text_encoder.", "text_encoder_2."))}
    if "lora_alpha" not in cfg:
        return None
    lora_alpha = float(cfg["lora_alpha"])
    patterns = {str(k).removeprefix("transformer."): float(v)
                for k, v in (cfg.get("alpha_pattern") or {}).items()}
    rslora = bool(cfg.get("use_rslora", False))

    def alpha_for(module: str, rank: int) -> float:
        alpha = lora_alpha
        for pattern, value in patterns.items():  # peft's get_pattern_key rule
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        # rsLoRA scales by alpha / sqrt(r); as an alpha for (alpha / r): alpha * sqrt(r)
        return alpha * rank ** 0.5 if rslora else alpha

    return alpha_for


# ----------------------------------------------------------------------------- matching

@dataclass
class MatchReport:
    matched_modules: list[str]
    unmatched_modules: list[str]
    matched_tensors: int
    unmatched_tensors: int
    # layers found in the model whose weight has another shape: (module, LoRA's, model's)
    misfit: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)


def _target_shape(target: Any, shape_of: Callable[[str], Any]) -> tuple[int, ...] | None:
    """The shape a key map target gives the LoRA: the weight's, or its fused slice's."""
    name, piece = (target, None) if isinstance(target, str) else (target[0], target[1])
    shape = shape_of(name)
    if shape is None or len(shape) != 2:
        return None
    shape = list(shape)
    if piece is not None:
        dim, _offset, size = piece
        shape[dim] = size
    return tuple(shape)


def match_lora(lora: LoraFile, key_map: dict[str, Any],
               shape_of: Callable[[str], Any] | None = None) -> MatchReport:
    """Count the converted layers (and their tensors) found in a MODEL's LoRA key map; with
    ``shape_of`` (weight name -> shape), a layer whose B @ A has another shape than the
    model's weight (or fused slice) does not match."""
    matched, unmatched, misfit = [], [], []
    for m in lora.modules:
        if m not in key_map:
            unmatched.append(m)
            continue
        want = _target_shape(key_map[m], shape_of) if shape_of is not None else None
        have = (lora.tensors[f"{m}.lora_B.weight"].shape[0],
                lora.tensors[f"{m}.lora_A.weight"].shape[1])
        if want is not None and tuple(have) != want:
            misfit.append((m, tuple(have), want))
        else:
            matched.append(m)
    per = 3  # lora_A, lora_B, alpha
    return MatchReport(matched, unmatched, per * len(matched),
                       per * (len(unmatched) + len(misfit)) + len(lora.unrecognised), misfit)


def lora_report(lora: LoraFile, match: MatchReport, strength: float) -> str:
    lines = [
        f"LoRA: {lora.path.name}",
        f"format: {lora.format}",
        f"rank: {lora.rank_text()}",
        f"layers: {len(lora.modules)} ({len(match.matched_modules)} matched the model, "
        f"{len(match.unmatched_modules)} did not"
        + (f", {len(match.misfit)} do not fit its weight shapes" if match.misfit else "") + ")",
        f"tensors matched: {match.matched_tensors}, unmatched: {match.unmatched_tensors}",
        f"strength: {strength:g}",
    ]
    if lora.skipped:
        lines.append(f"text-encoder tensors not applied (MODEL only): {len(lora.skipped)}")
    if lora.unrecognised:
        lines.append(f"keys not understood: {len(lora.unrecognised)}, e.g. "
                     + ", ".join(lora.unrecognised[:3]))
    if match.unmatched_modules:
        lines.append("unmatched layers, e.g. " + ", ".join(match.unmatched_modules[:5]))
    for m, have, want in match.misfit[:3]:
        lines.append(f"not applied: {m} is {have[0]}x{have[1]} in the LoRA, "
                     f"{want[0]}x{want[1]} in the model")
    return "\n".join(lines)


def apply_lora(model: Any, lora: LoraFile, strength: float) -> tuple[Any, str]:
    """Patch a ComfyUI MODEL with the matched layers; return (model, report)."""
    key_map = _comfy.lora_key_map(model)
    match = match_lora(lora, key_map, lambda name: _comfy.model_weight_shape(model, name))
    if not match.matched_modules and match.misfit:
        m, have, want = match.misfit[0]
        raise ScienceT2IError(
            f"{lora.path.name} has this model's layer names but not its sizes (e.g. {m}: "
            f"{have[0]}x{have[1]} in the LoRA, {want[0]}x{want[1]} in the model); it was "
            "trained for another FLUX variant. Pick a LoRA trained for this model.")
    if not match.matched_modules:
        raise ScienceT2IError(
            f"none of the {len(lora.modules)} layers of {lora.path.name} exist in this model "
            f"(e.g. {lora.modules[0]}); it is not a LoRA for this FLUX model. Connect a FLUX "
            "MODEL (from Load Diffusion Model / Load Checkpoint) or pick a LoRA trained for it.")
    report = lora_report(lora, match, strength)
    if strength == 0:
        return model, report
    keep = {f"{m}.{s}" for m in match.matched_modules for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    patch = {k: v for k, v in lora.tensors.items() if k in keep}
    new_model, _ = _comfy.load_lora_for_models(model, None, patch, strength, 0.0)
    return new_model, report


# ----------------------------------------------------------------------------- writing

def save_flux_lora(transformer: Any, path: str | Path, *, adapter_name: str = "default",
                   base_model: str = "black-forest-labs/FLUX.1-dev",
                   training_config: dict | None = None,
                   extra_metadata: dict | None = None) -> Path:
    """Write the peft LoRA of a diffusers FluxTransformer2DModel as diffusers-format safetensors.

    Keys are ``transformer.<module>.lora_A/lora_B.weight`` as FluxPipeline.save_lora_weights
    writes them, with its ``lora_adapter_metadata``. Each layer's peft scale (alpha / r, or
    alpha / sqrt(r)) is folded into lora_B and the config written with alpha = r: ComfyUI
    ignores that metadata and applies B @ A at scale 1, so only a folded file loads the same in
    ComfyUI and diffusers. The trained rank/alpha are kept in ``science_t2i.*`` metadata.
    The file is written atomically (temporary file, then rename).
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    configs = getattr(transformer, "peft_config", None) or {}
    if adapter_name not in configs:
        raise ScienceT2IError(
            f"the transformer has no LoRA adapter named {adapter_name!r} (adapters: "
            f"{sorted(configs) or 'none'}); add one with transformer.add_adapter(LoraConfig(...)).")
    config = configs[adapter_name]
    if getattr(config, "use_dora", False):
        raise ScienceT2IError("DoRA adapters cannot be saved as a plain LoRA; train with use_dora=False.")

    scaling: dict[str, float] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.scaling:
            scaling[_strip_peft_prefix(name)] = float(module.scaling[adapter_name])
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)

    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for key, value in state.items():
        module, _, role = _strip_peft_prefix(key).rpartition(".lora_")
        if not is_diffusers_module(module) or role not in ("A.weight", "B.weight"):
            raise ScienceT2IError(
                f"adapter tensor {key!r} is not a LoRA of a FluxTransformer2DModel linear layer; "
                "save_flux_lora writes FLUX transformer LoRAs only.")
        value = value.detach().float().cpu()
        if not torch.isfinite(value).all():
            raise ScienceT2IError(f"adapter tensor {key} has NaN/inf values; training diverged.")
        if role == "B.weight":
            value = value * scaling[module]
        else:
            ranks[module] = int(value.shape[0])
        tensors[f"transformer.{module}.lora_{role}"] = value.contiguous()
    if not tensors:
        raise ScienceT2IError(f"adapter {adapter_name!r} has no LoRA weights to save.")

    rank = Counter(ranks.values()).most_common(1)[0][0]
    rank_pattern = {f"^{m}": r for m, r in ranks.items() if r != rank}
    target_modules = sorted(ranks)
    diffusers_cfg = {
        "r": rank, "lora_alpha": rank, "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern), "target_modules": target_modules,
        "use_rslora": False, "use_dora": False, "lora_bias": False, "bias": "none",
        "lora_dropout": 0.0, "init_lora_weights": True, "peft_type": "LORA",
    }
    metadata = {
        "format": "pt",
        DIFFUSERS_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in diffusers_cfg.items()},
                                           indent=2, sort_keys=True),
        META_PREFIX + "rank": str(config.r),
        META_PREFIX + "alpha": str(config.lora_alpha),
        META_PREFIX + "use_rslora": str(bool(getattr(config, "use_rslora", False))).lower(),
        META_PREFIX + "scale_folded_into_lora_B": "true",
        META_PREFIX + "target_modules": json.dumps(target_modules),
        META_PREFIX + "base_model": base_model,
    }
    if training_config is not None:
        metadata[META_PREFIX + "training_config_sha256"] = json_digest(training_config)
        metadata[META_PREFIX + "training_config"] = json.dumps(training_config, sort_keys=True,
                                                               default=str)
    for key, value in (extra_metadata or {}).items():
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value, default=str)
    save_safetensors_atomic(tensors, path, metadata=metadata)
    return path


def _strip_peft_prefix(name: str) -> str:
    return name.removeprefix("base_model.model.")


# ----------------------------------------------------------------------------- ComfyUI node

def lora_names() -> list[str]:
    return _comfy.list_models("loras", extensions=(".safetensors",), include_dirs=False)


class ScienceT2I_LoraLoader:
    """MODEL + FLUX LoRA (any key format) -> patched MODEL and a report of what matched."""

    def __init__(self) -> None:
        self._cache: tuple[tuple[str, float], LoraFile] | None = None

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
        stamp = (str(path), path.stat().st_mtime)
        if self._cache is not None and self._cache[0] == stamp:
            lora = self._cache[1]
        else:
            lora = read_lora(path)
            self._cache = (stamp, lora)
        return apply_lora(model, lora, strength)


NODE_CLASS_MAPPINGS = {"ScienceT2I_LoraLoader": ScienceT2I_LoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"ScienceT2I_LoraLoader": "Science LoRA Loader"}
