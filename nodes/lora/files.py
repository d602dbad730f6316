"""FLUX LoRA files: read in any common key format, written in the diffusers layout.

``read_lora`` converts every file to diffusers keys with the ``transformer.`` prefix (see
``keys``), which ComfyUI's FLUX key map and diffusers both accept; ``save_flux_lora`` writes
the LoRA a trainer produced, its scale folded into lora_B so ComfyUI and diffusers load it
the same.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.digest import json_digest
from ..core.files import (PICKLE_SUFFIXES, load_safetensors, safetensors_metadata,
                          save_safetensors_atomic)
from ..errors import ScienceT2IError
from .keys import is_diffusers_module, normalise_state_dict

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
    """Read a FLUX LoRA (.safetensors) in any supported key format; see ``keys``."""
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

    metadata = {
        "format": "pt",
        DIFFUSERS_METADATA_KEY: folded_adapter_config(ranks),
        META_PREFIX + "rank": str(config.r),
        META_PREFIX + "alpha": str(config.lora_alpha),
        META_PREFIX + "use_rslora": str(bool(getattr(config, "use_rslora", False))).lower(),
        META_PREFIX + "scale_folded_into_lora_B": "true",
        META_PREFIX + "target_modules": json.dumps(sorted(ranks)),
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


def folded_adapter_config(ranks: dict[str, int]) -> str:
    """diffusers' ``lora_adapter_metadata`` of a LoRA whose scale is folded into lora_B
    (alpha = r on every layer): the most common rank, the others as rank/alpha patterns.
    ``ranks``: rank by module name, without the ``transformer.`` prefix."""
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {f"^{m}": r for m, r in ranks.items() if r != rank}
    cfg = {"r": rank, "lora_alpha": rank, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
           "target_modules": sorted(ranks), "use_rslora": False, "use_dora": False,
           "lora_bias": False, "bias": "none", "lora_dropout": 0.0, "init_lora_weights": True,
           "peft_type": "LORA"}
    return json.dumps({f"transformer.{k}": v for k, v in cfg.items()}, indent=2, sort_keys=True)


def _strip_peft_prefix(name: str) -> str:
    return name.removeprefix("base_model.model.")
