"""FLUX LoRA key formats: recognise every common naming and convert to diffusers module names.

A FLUX LoRA names the layer it patches in one of two vocabularies:

- diffusers (FluxTransformer2DModel): ``transformer_blocks.0.attn.to_q``, separate q/k/v;
- BFL (the original FLUX code, which ComfyUI runs): ``double_blocks.0.img_attn.qkv``, fused
  q/k/v (and, in single blocks, q/k/v + MLP-in fused into ``linear1``).

and writes it with one of several key spellings (peft ``lora_A/lora_B`` with or without the
``transformer.`` or ``base_model.model.`` prefix and adapter names; kohya ``lora_unet_*`` with
``lora_down/lora_up/alpha``; ``diffusion_model.`` BFL keys). Everything is converted to the
spelling ComfyUI's and diffusers' FLUX loaders both accept: ``transformer.<diffusers module>``
with ``lora_A.weight``, ``lora_B.weight`` and ``alpha``. Fused BFL layers are split along the
output rows exactly as ComfyUI's ``comfy.utils.flux_to_diffusers`` slices them.

Pure functions on tensors, no file access: ``files`` reads and checks the files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import ScienceT2IError

# ----------------------------------------------------------------------------- name tables

# Linear layers of diffusers' FluxTransformer2DModel that a LoRA can patch.
DIFFUSERS_TOP = (
    "x_embedder", "context_embedder", "proj_out", "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
)
DIFFUSERS_DOUBLE = (
    "norm1.linear", "norm1_context.linear",
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)
DIFFUSERS_SINGLE = ("norm.linear", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")


@dataclass(frozen=True)
class BflTarget:
    """Where one BFL layer goes in diffusers: one module, or several row slices of it."""
    modules: tuple[str, ...]
    split: str = ""          # "", "qkv" (3 x hidden rows) or "linear1" (3 x hidden + MLP rows)
    swap_halves: bool = False  # BFL (shift, scale) vs diffusers (scale, shift) row order


# BFL layer -> diffusers module(s), from ComfyUI's comfy.utils.flux_to_diffusers.
BFL_TOP = {
    "img_in": BflTarget(("x_embedder",)),
    "txt_in": BflTarget(("context_embedder",)),
    "time_in.in_layer": BflTarget(("time_text_embed.timestep_embedder.linear_1",)),
    "time_in.out_layer": BflTarget(("time_text_embed.timestep_embedder.linear_2",)),
    "vector_in.in_layer": BflTarget(("time_text_embed.text_embedder.linear_1",)),
    "vector_in.out_layer": BflTarget(("time_text_embed.text_embedder.linear_2",)),
    "guidance_in.in_layer": BflTarget(("time_text_embed.guidance_embedder.linear_1",)),
    "guidance_in.out_layer": BflTarget(("time_text_embed.guidance_embedder.linear_2",)),
    "final_layer.linear": BflTarget(("proj_out",)),
    "final_layer.adaLN_modulation.1": BflTarget(("norm_out.linear",), swap_halves=True),
}
BFL_DOUBLE = {
    "img_attn.qkv": BflTarget(("attn.to_q", "attn.to_k", "attn.to_v"), "qkv"),
    "txt_attn.qkv": BflTarget(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "qkv"),
    "img_attn.proj": BflTarget(("attn.to_out.0",)),
    "txt_attn.proj": BflTarget(("attn.to_add_out",)),
    "img_mod.lin": BflTarget(("norm1.linear",)),
    "txt_mod.lin": BflTarget(("norm1_context.linear",)),
    "img_mlp.0": BflTarget(("ff.net.0.proj",)),
    "img_mlp.2": BflTarget(("ff.net.2",)),
    "txt_mlp.0": BflTarget(("ff_context.net.0.proj",)),
    "txt_mlp.2": BflTarget(("ff_context.net.2",)),
}
BFL_SINGLE = {
    "linear1": BflTarget(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear1"),
    "linear2": BflTarget(("proj_out",)),
    "modulation.lin": BflTarget(("norm.linear",)),
}

_DIFF_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_BFL_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_DIFF_BLOCK_U = re.compile(r"^(transformer_blocks|single_transformer_blocks)_(\d+)_(.+)$")
_BFL_BLOCK_U = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(.+)$")


def _underscored(names) -> dict[str, str]:
    return {n.replace(".", "_"): n for n in names}


_U_DIFF_TOP, _U_DIFF_DOUBLE, _U_DIFF_SINGLE = (
    _underscored(DIFFUSERS_TOP), _underscored(DIFFUSERS_DOUBLE), _underscored(DIFFUSERS_SINGLE))
_U_BFL_TOP, _U_BFL_DOUBLE, _U_BFL_SINGLE = (
    _underscored(BFL_TOP), _underscored(BFL_DOUBLE), _underscored(BFL_SINGLE))


def is_diffusers_module(name: str) -> bool:
    """True for a LoRA-patchable Linear of FluxTransformer2DModel (no ``transformer.`` prefix)."""
    if name in DIFFUSERS_TOP:
        return True
    m = _DIFF_BLOCK.match(name)
    if not m:
        return False
    return m.group(3) in (DIFFUSERS_DOUBLE if m.group(1) == "transformer_blocks" else DIFFUSERS_SINGLE)


def _diffusers_from_underscored(name: str) -> str | None:
    if name in _U_DIFF_TOP:
        return _U_DIFF_TOP[name]
    m = _DIFF_BLOCK_U.match(name)
    if not m:
        return None
    table = _U_DIFF_DOUBLE if m.group(1) == "transformer_blocks" else _U_DIFF_SINGLE
    rest = table.get(m.group(3))
    return f"{m.group(1)}.{m.group(2)}.{rest}" if rest else None


def _bfl_target(name: str) -> tuple[str, BflTarget] | None:
    """A dotted BFL layer name -> (diffusers block prefix, target)."""
    if name in BFL_TOP:
        return "", BFL_TOP[name]
    m = _BFL_BLOCK.match(name)
    if not m:
        return None
    double = m.group(1) == "double_blocks"
    target = (BFL_DOUBLE if double else BFL_SINGLE).get(m.group(3))
    if target is None:
        return None
    prefix = f"{'transformer_blocks' if double else 'single_transformer_blocks'}.{m.group(2)}."
    return prefix, target


def _bfl_from_underscored(name: str) -> str | None:
    if name in _U_BFL_TOP:
        return _U_BFL_TOP[name]
    m = _BFL_BLOCK_U.match(name)
    if not m:
        return None
    table = _U_BFL_DOUBLE if m.group(1) == "double_blocks" else _U_BFL_SINGLE
    rest = table.get(m.group(3))
    return f"{m.group(1)}.{m.group(2)}.{rest}" if rest else None


# ----------------------------------------------------------------------------- key parsing

# Tensor role suffixes: peft (optionally with an adapter name), kohya, alpha.
_ROLE = re.compile(
    r"^(?P<module>.+?)\.(?:(?P<peft>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight"
    r"|(?P<kohya>lora_down|lora_up)\.weight|(?P<alpha>alpha))$")

# Keys of other models that FLUX LoRA files may carry (text-encoder LoRAs): skipped, reported.
_TEXT_ENCODER = re.compile(r"^(lora_te\d?_|lora_te_|text_encoder(_\d)?\.|te\d?\.)")
# Keys that say "this LoRA is for a Stable Diffusion / SDXL UNet".
_SD_UNET = re.compile(
    r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]\d*")


@dataclass
class SourceModule:
    """One patched layer as the file names it."""
    key: str                  # the file's module key (without the role suffix)
    fmt: str                  # format label
    diffusers: str | None     # diffusers module name, when the layer is a diffusers one
    bfl: str | None           # BFL layer name, when it is a BFL one
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


@dataclass
class Normalised:
    """The converted LoRA: tensors keyed ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``
    / ``alpha``; what each source format was; keys skipped or not understood."""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)       # module -> alpha
    ranks: dict[str, int] = field(default_factory=dict)          # module -> rank
    formats: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)              # text-encoder keys
    unrecognised: list[str] = field(default_factory=list)


def _classify(module_key: str) -> tuple[str, str | None, str | None]:
    """File module key -> (format label, diffusers name, BFL name); names None if unknown."""
    key, labels = module_key, []
    if key.startswith("base_model.model."):
        key, labels = key[len("base_model.model."):], ["base_model.model."]
    if key.startswith("lora_unet_") or key.startswith("lora_transformer_"):
        body = key.split("_", 2)[2]
        trainer = "kohya" if key.startswith("lora_unet_") else "OneTrainer"
        diff = _diffusers_from_underscored(body)
        if diff:
            return f"{trainer} (diffusers names)", diff, None
        bfl = _bfl_from_underscored(body)
        return f"{trainer} (BFL names)", None, bfl
    if key.startswith("transformer."):
        key = key[len("transformer."):]
        labels.append("transformer.")
    elif key.startswith("diffusion_model."):
        key = key[len("diffusion_model."):]
        return "BFL (diffusion_model.)", None, key if _bfl_target(key) else None
    if is_diffusers_module(key):
        if labels == ["transformer."]:
            return "diffusers", key, None
        prefix = " ".join(labels)
        return f"peft ({prefix})" if prefix else "peft (no prefix)", key, None
    if _bfl_target(key):
        return "BFL", None, key
    return "unknown", None, None


def _split_rows(name: str, B: torch.Tensor, in_features: int, split: str) -> list[int]:
    hidden = in_features
    if split == "qkv":
        if B.shape[0] != 3 * hidden:
            raise ScienceT2IError(
                f"LoRA layer {name}: fused q/k/v output has {B.shape[0]} rows, expected "
                f"3 x {hidden}; the file is damaged or not a FLUX LoRA.")
        return [hidden] * 3
    mlp = B.shape[0] - 3 * hidden
    if mlp <= 0:
        raise ScienceT2IError(
            f"LoRA layer {name}: linear1 output has {B.shape[0]} rows, expected 3 x {hidden} "
            "plus the MLP width; the file is damaged or not a FLUX LoRA.")
    return [hidden] * 3 + [mlp]


def _split_fused(name: str, A: torch.Tensor, B: torch.Tensor, alpha: float,
                 dims: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Split a fused layer's LoRA into one LoRA per output slice, exactly.

    delta = (alpha / r) B A; each slice's rows of B with the same A give that slice's delta.
    A LoRA that was trained per slice and saved fused (A stacked, B block-diagonal, as kohya's
    split-q/k/v option writes) is split back into its blocks, keeping the per-slice rank.
    """
    n, rank = len(dims), A.shape[0]
    if rank % n == 0:
        sub = rank // n
        starts = [sum(dims[:i]) for i in range(n)]
        block_diag = all(
            not torch.any(B[starts[j]:starts[j] + dims[j], k * sub:(k + 1) * sub])
            for j in range(n) for k in range(n) if j != k)
        if block_diag and torch.any(B):
            # (alpha / rank) must stay the scale, so the per-slice alpha is alpha * sub / rank
            return [(A[j * sub:(j + 1) * sub].clone(),
                     B[starts[j]:starts[j] + dims[j], j * sub:(j + 1) * sub].clone(),
                     alpha * sub / rank) for j in range(n)]
    return [(A.clone(), part.clone(), alpha) for part in torch.split(B, dims, dim=0)]


def _swap_halves(B: torch.Tensor) -> torch.Tensor:
    first, second = B.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def normalise_state_dict(sd: dict[str, torch.Tensor],
                         default_alpha=None) -> Normalised:
    """Convert a FLUX LoRA state dict in any supported format to diffusers ``transformer.`` keys.

    ``default_alpha(module, rank) -> float`` gives the alpha of a layer whose file has no alpha
    tensor (from diffusers' adapter metadata); without it alpha = rank (scale 1), the
    convention of peft files without alphas, as both ComfyUI and diffusers read them.
    """
    out = Normalised()
    sources: dict[str, SourceModule] = {}
    for key, tensor in sd.items():
        if _TEXT_ENCODER.match(key):
            out.skipped.append(key)
            continue
        m = _ROLE.match(key)
        if not m:
            out.unrecognised.append(key)
            continue
        module_key = m.group("module")
        src = sources.get(module_key)
        if src is None:
            fmt, diff, bfl = _classify(module_key)
            if diff is None and bfl is None:
                out.unrecognised.append(key)
                continue
            src = sources[module_key] = SourceModule(module_key, fmt, diff, bfl)
        if m.group("adapter") and not src.fmt.endswith(" + adapter names"):
            src.fmt += " + adapter names"
        role = m.group("peft") or m.group("kohya") or "alpha"
        slot = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B", "alpha": "alpha"}[role]
        if getattr(src, slot) is not None:
            raise ScienceT2IError(
                f"LoRA layer {module_key} has two {slot} tensors (e.g. two adapter names in one "
                "file); save a single adapter.")
        setattr(src, slot, tensor)

    if not sources:
        _raise_not_flux(sd, out)

    for src in sources.values():
        A, B = _check_pair(src)
        rank = A.shape[0]
        if src.alpha is not None:
            if src.alpha.numel() != 1 or not torch.isfinite(src.alpha.float()).all():
                raise ScienceT2IError(
                    f"LoRA layer {src.key}: alpha must be one finite number, got a tensor of "
                    f"shape {tuple(src.alpha.shape)}; the file is damaged.")
            alpha = float(src.alpha.float().item())
        else:
            alpha = None
        if src.diffusers is not None:
            if alpha is None:
                alpha_value = float(default_alpha(src.diffusers, rank)) if default_alpha else float(rank)
            else:
                alpha_value = alpha
            _put(out, src.diffusers, A, B, alpha_value)
        else:
            prefix, target = _bfl_target(src.bfl)
            alpha_value = float(rank) if alpha is None else alpha
            if target.swap_halves:
                B = _swap_halves(B)
            if target.split:
                dims = _split_rows(src.key, B, A.shape[1], target.split)
                parts = _split_fused(src.key, A, B, alpha_value, dims)
            else:
                parts = [(A, B, alpha_value)]
            for mod, (a, b, al) in zip(target.modules, parts):
                _put(out, prefix + mod, a, b, al)
        if src.fmt not in out.formats:
            out.formats.append(src.fmt)
    return out


def _check_pair(src: SourceModule) -> tuple[torch.Tensor, torch.Tensor]:
    if src.A is None or src.B is None:
        missing = "down/A" if src.A is None else "up/B"
        raise ScienceT2IError(
            f"LoRA layer {src.key} has no {missing} matrix; the file is incomplete or damaged.")
    A, B = src.A, src.B
    if A.ndim == 4 and A.shape[2:] == (1, 1):  # 1x1 "conv" spelling of a linear LoRA
        A = A.flatten(1)
    if B.ndim == 4 and B.shape[2:] == (1, 1):
        B = B.flatten(1)
    if A.ndim != 2 or B.ndim != 2:
        raise ScienceT2IError(
            f"LoRA layer {src.key}: expected 2-D matrices, got A {tuple(A.shape)} and B "
            f"{tuple(B.shape)}; FLUX LoRAs patch linear layers only.")
    if A.shape[0] != B.shape[1]:
        raise ScienceT2IError(
            f"LoRA layer {src.key}: rank mismatch, A (down) has {A.shape[0]} rows but B (up) "
            f"has {B.shape[1]} columns; the file is damaged or mixes two LoRAs.")
    for name, t in (("A", A), ("B", B)):
        if not torch.is_floating_point(t):
            raise ScienceT2IError(f"LoRA layer {src.key}: {name} is not a float tensor ({t.dtype}).")
        if not torch.isfinite(t).all():
            raise ScienceT2IError(
                f"LoRA layer {src.key}: {name} contains NaN or infinite values; the training run "
                "diverged or the file is damaged. Use an earlier checkpoint.")
    return A, B


def _put(out: Normalised, module: str, A: torch.Tensor, B: torch.Tensor, alpha: float) -> None:
    name = f"transformer.{module}"
    if name in out.ranks:
        raise ScienceT2IError(
            f"LoRA layer {module} appears twice in the file (under two key formats); "
            "keep one of them.")
    out.tensors[f"{name}.lora_A.weight"] = A
    out.tensors[f"{name}.lora_B.weight"] = B
    out.tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    out.alphas[name] = alpha
    out.ranks[name] = int(A.shape[0])


def _raise_not_flux(sd: dict[str, torch.Tensor], out: Normalised) -> None:
    keys = list(sd)
    if any(_SD_UNET.search(k) for k in keys):
        raise ScienceT2IError(
            "this LoRA is for a Stable Diffusion / SDXL UNet (its keys name down_blocks / "
            f"input_blocks, e.g. {keys[0]!r}), not for FLUX. Load it with ComfyUI's LoRA loader "
            "on an SD/SDXL model, or pick a FLUX LoRA.")
    if out.skipped and not out.unrecognised:
        raise ScienceT2IError(
            "this LoRA only patches text encoders (keys like "
            f"{out.skipped[0]!r}); it has nothing for the FLUX diffusion model.")
    sample = ", ".join(repr(k) for k in keys[:3])
    raise ScienceT2IError(
        f"no FLUX LoRA layers found among {len(keys)} tensors (e.g. {sample}). Supported: "
        "diffusers/peft lora_A/lora_B keys (with or without 'transformer.' / "
        "'base_model.model.' prefixes and adapter names), kohya lora_unet_* "
        "lora_down/lora_up/alpha keys with BFL or diffusers layer names, and "
        "diffusion_model.* BFL keys.")
