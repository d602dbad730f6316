"""CLIP image preprocessing on ComfyUI IMAGE tensors, without a PIL round trip.

Two modes:

- ``exact`` (the default): what ``CLIPImageProcessor`` (transformers' PIL pipeline, the one
  SciScore was trained and evaluated with) or open_clip's torchvision transform does to the
  8-bit picture, bit for bit: the image rounded to uint8, shortest side to ``size`` with
  Pillow's fixed-point resize (``pil_resample``), centre crop, then rescale and normalise in
  float32 in the same operation order (a 256-entry table per channel).
- ``fast``: one float bicubic resize with antialiasing (torch's kernel, PIL's a = -0.5), values
  rounded to 1/255 steps; pixels differ from the processor's by a few 1/255 steps (see
  README), scores by about 1e-3 relative.

``convention`` says whose pipeline is reproduced: "transformers" (crop offset floored,
uint8 * rescale_factor in float64 then cast) or "torchvision" (open_clip: crop offset
rounded, uint8 / 255 in float32).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.images import as_rgb_batch
from .pil_resample import resize_uint8

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("exact", "fast")
CONVENTIONS = ("transformers", "torchvision")


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shortest side to ``size``; the long side as transformers computes it (truncated)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _crop_window(h: int, w: int, crop: int, convention: str) -> tuple[int, int, int, int]:
    """(pad top, pad left, crop top, crop left) of a centre crop, as each library does it."""
    if convention == "torchvision":
        pt, pl = max(crop - h, 0) // 2, max(crop - w, 0) // 2
        hh, ww = max(h, crop), max(w, crop)
        return pt, pl, int(round((hh - crop) / 2.0)), int(round((ww - crop) / 2.0))
    pt, pl = math.ceil(max(crop - h, 0) / 2), math.ceil(max(crop - w, 0) / 2)
    top, left = (h - crop) // 2, (w - crop) // 2
    return pt, pl, top + pt, left + pl


def _centre_crop(x: torch.Tensor, crop: int, convention: str = "transformers") -> torch.Tensor:
    h, w = x.shape[-2:]
    pt, pl, top, left = _crop_window(h, w, crop, convention)
    if crop > h or crop > w:  # only when crop_size > shortest_edge: zero padding
        x = F.pad(x, (pl, max(crop - w, 0) - pl, pt, max(crop - h, 0) - pt))
    return x[..., top:top + crop, left:left + crop]


def normalise_table(mean: Sequence[float], std: Sequence[float], rescale_factor: float,
                    convention: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """[3, 256] float32: the normalised value of each 8-bit level, computed with the library's
    own operations (so the table holds exactly what it would compute)."""
    levels = torch.arange(256, dtype=torch.float64)
    if convention == "torchvision":
        x = levels.float() / 255.0                       # ToTensor: uint8 -> float32 / 255
    else:
        x = (levels * rescale_factor).float()            # rescale in float64, then cast
    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1)
    return ((x.view(1, 256) - m) / s).to(device)


def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] in 0..1 -> uint8 [B,3,H,W] levels, rounded as the reference rounds a
    float image to uint8 (``(x * 255).round()``)."""
    x = as_rgb_batch(images)
    return (x * 255.0).round_().to(torch.uint8).movedim(-1, 1)


def preprocess_images(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                      std: Sequence[float] = CLIP_STD, crop_size: int | None = None,
                      quantize: bool = True, *, mode: str = "exact",
                      rescale_factor: float = 1 / 255, convention: str = "transformers",
                      resample: str = "bicubic") -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] (or [H,W,C]) in 0..1 -> normalised pixels [B,3,crop,crop].

    C may be 1, 3 or 4 (see ``as_rgb_batch``); any height and width. Runs on the tensor's
    device and returns float32. ``quantize`` applies to ``fast`` only (exact is 8-bit).
    """
    if mode not in MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; use one of {', '.join(MODES)}")
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; use one of "
                         f"{', '.join(CONVENTIONS)}")
    crop = crop_size or size
    if mode == "exact":
        x = to_uint8_levels(images)
        new_h, new_w = resized_shape(*x.shape[-2:], size)
        x = resize_uint8(x, new_h, new_w, kind=resample)
        x = _centre_crop(x, crop, convention).long()
        table = normalise_table(mean, std, rescale_factor, convention, x.device)
        b = x.shape[0]
        flat = x.movedim(1, 0).reshape(3, -1)
        out = torch.gather(table, 1, flat).view(3, b, crop, crop).movedim(0, 1)
        return out.contiguous()
    x = as_rgb_batch(images).movedim(-1, 1)  # [B,3,H,W]
    h, w = x.shape[-2:]
    new_h, new_w = resized_shape(h, w, size)
    if (new_h, new_w) != (h, w):
        # antialias=True gives PIL's bicubic (a = -0.5) with a widened kernel when shrinking
        x = F.interpolate(x, size=(new_h, new_w), mode=resample, antialias=True,
                          align_corners=False)
    x = _centre_crop(x, crop, convention)
    x = x.clamp(0.0, 1.0)
    if quantize:
        x = (x * 255.0).round() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()
