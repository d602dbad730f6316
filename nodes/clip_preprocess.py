"""CLIP image preprocessing on ComfyUI IMAGE tensors, without a PIL round trip.

Reproduces what ``CLIPImageProcessor`` does to a uint8 picture (the pipeline SciScore was
trained and evaluated with): shortest side to ``size`` (long side truncated, as
transformers computes it), bicubic with antialiasing (PIL's kernel), centre crop, values
clamped and rounded to 1/255 steps (the processor resizes 8-bit pixels), then mean/std
normalisation. The rounding step is also what ComfyUI's own ``clip_preprocess`` does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .images import as_rgb_batch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shortest side to ``size``; the long side as transformers computes it (truncated)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _centre_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if crop > h or crop > w:  # only when crop_size > shortest_edge: zero-pad like transformers
        pl, pt = max(crop - w, 0) // 2, max(crop - h, 0) // 2
        pr, pb = max(crop - w, 0) - pl, max(crop - h, 0) - pt
        x = F.pad(x, (pl, pr, pt, pb))
        h, w = x.shape[-2:]
    top, left = int((h - crop) / 2.0), int((w - crop) / 2.0)
    return x[..., top:top + crop, left:left + crop]


def preprocess_images(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                      std: Sequence[float] = CLIP_STD, crop_size: int | None = None,
                      quantize: bool = True) -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] (or [H,W,C]) in 0..1 -> normalised pixels [B,3,crop,crop].

    C may be 1, 3 or 4 (see ``as_rgb_batch``); any height and width. Runs on the tensor's
    device and returns float32.
    """
    x = as_rgb_batch(images).movedim(-1, 1)  # [B,3,H,W]
    crop = crop_size or size
    h, w = x.shape[-2:]
    new_h, new_w = resized_shape(h, w, size)
    if (new_h, new_w) != (h, w):
        # antialias=True gives PIL's bicubic (a = -0.5) with a widened kernel when shrinking
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                          align_corners=False)
    x = _centre_crop(x, crop)
    x = x.clamp(0.0, 1.0)
    if quantize:
        x = (x * 255.0).round() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()
