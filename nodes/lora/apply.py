"""Applying a LoRA to a ComfyUI MODEL: its layers counted against the MODEL's own key map
(and weight shapes) first, so a LoRA that would change nothing is an error, not a silent
no-op, and the report says what matched."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .. import _comfy
from ..errors import ScienceT2IError
from .files import LoraFile


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
    new_model, _ = _comfy.load_lora_for_models(model, None, patch, strength, 0.0,
                                               metadata=lora.metadata or None)
    return new_model, report
