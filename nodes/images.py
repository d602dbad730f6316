"""ComfyUI IMAGE / MASK tensors: validation and channel handling shared by the nodes."""
from __future__ import annotations

import torch

from .errors import ScienceT2IError


def as_rgb_batch(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Validate a ComfyUI IMAGE and return it as float32 [B,H,W,3] in 0..1.

    Accepts [H,W,C] or [B,H,W,C] with C = 1 (grey, repeated), 3, or 4 (alpha dropped, as
    ComfyUI's own clip_preprocess does). Rejects empty, zero-size and non-finite images.
    """
    if not isinstance(image, torch.Tensor):
        raise ScienceT2IError(f"{what}: expected a ComfyUI IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ScienceT2IError(
            f"{what}: expected an IMAGE of shape [batch, height, width, channels], got "
            f"{tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0:
        raise ScienceT2IError(f"{what}: the image batch is empty")
    if h == 0 or w == 0:
        raise ScienceT2IError(f"{what}: zero-size image ({h}x{w} pixels)")
    if c not in (1, 3, 4):
        raise ScienceT2IError(
            f"{what}: images must have 1, 3 or 4 channels in the last dimension, got {c} "
            f"(shape {tuple(image.shape)}); is the tensor channels-first?")
    image = image.float()
    # one reduction in the usual case; the element-wise check only when the sum is not finite
    if not torch.isfinite(image.sum()) and not torch.isfinite(image).all():
        bad = (~torch.isfinite(image)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ScienceT2IError(
            f"{what}: image(s) {bad} contain NaN or infinite values; check the node that "
            "produced them (a VAE decode in fp16 can overflow: try fp32/bf16 VAE).")
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    lo, hi = torch.aminmax(image)
    return image.clamp(0.0, 1.0) if lo < 0 or hi > 1 else image


def as_mask_batch(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """Validate a ComfyUI MASK ([H,W] or [B,H,W]) and return float32 [B,H,W]."""
    if not isinstance(mask, torch.Tensor):
        raise ScienceT2IError(f"{what}: expected a MASK tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or 0 in mask.shape:
        raise ScienceT2IError(f"{what}: expected a MASK of shape [batch, height, width], got "
                              f"{tuple(mask.shape)}")
    return mask.float()


def to_pil(image: torch.Tensor):
    """One [H,W,3] 0..1 tensor to a PIL image (for saving and drawing only)."""
    from PIL import Image
    arr = (image.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return Image.fromarray(arr)


def from_pil(img) -> torch.Tensor:
    """A PIL image to a [1,H,W,3] 0..1 float tensor (ComfyUI IMAGE)."""
    import numpy as np
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)
