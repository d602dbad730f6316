"""ComfyUI IMAGE / MASK tensors: validation and channel handling shared by the nodes."""
from __future__ import annotations

import torch

from ..errors import ScienceT2IError

# how far outside 0..1 an IMAGE may reach before it is an error instead of rounding noise
RANGE_SLACK = 0.01


def _range_hint(lo: float, hi: float) -> str:
    if hi > 2:
        return "these look like 0..255 values: divide the image by 255 first."
    if lo < -0.5:
        return "these look like -1..1 values: map them with (x + 1) / 2 first."
    return "clamp or rescale the image to 0..1 first."


def as_rgb_batch(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Validate a ComfyUI IMAGE and return it as float32 [B,H,W,3] in 0..1.

    Accepts [H,W,C] or [B,H,W,C] with C = 1 (grey, repeated), 3, or 4 (alpha dropped, as
    ComfyUI's own clip_preprocess does). Rejects empty, zero-size and non-finite images, and
    values outside 0..1 by more than ``RANGE_SLACK`` (0..255 or -1..1 data would otherwise
    be clamped to white or black); smaller overshoots are clamped.
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
    lo, hi = (float(v) for v in torch.aminmax(image))
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ScienceT2IError(f"{what}: values span {lo:.4g} to {hi:.4g}, but IMAGE tensors "
                              f"hold 0..1; {_range_hint(lo, hi)}")
    # rounding noise just outside 0..1 (a VAE decode, a blend) is clamped
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
    mask = mask.float()
    if not torch.isfinite(mask.sum()) and not torch.isfinite(mask).all():
        bad = (~torch.isfinite(mask)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ScienceT2IError(f"{what}: mask(s) {bad} contain NaN or infinite values; check "
                              "the node that produced them.")
    return mask


def to_pil(image: torch.Tensor):
    """One [H,W,3] 0..1 tensor to a PIL image (for saving and drawing only)."""
    from PIL import Image
    arr = (image.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return Image.fromarray(arr)


# PIL modes that hold more than 8 bits per pixel (16-bit PNGs open as I;16 or I): convert()
# to RGB clips them at 255 instead of scaling
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_to_unit(img) -> "np.ndarray":  # noqa: F821
    """A grey image of more than 8 bits -> float32 [H,W] in 0..1."""
    import numpy as np
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and arr.max(initial=0) <= 1.0:
        scale = 1.0                   # float images already in 0..1
    elif img.mode in ("I", "F") and arr.max(initial=0) <= 255:
        scale = 255.0                 # 8-bit values kept in a wide mode
    else:
        scale = 65535.0               # 16-bit
    return np.clip(arr / scale, 0.0, 1.0).astype(np.float32)


def rgb8(img):
    """Any PIL image -> 8-bit RGB, 16-bit grey scaled (not clipped) to 8 bits."""
    import numpy as np
    from PIL import Image
    if img.mode in _WIDE_MODES:
        grey = (_wide_to_unit(img) * 255.0).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def from_pil(img) -> torch.Tensor:
    """A PIL image to a [1,H,W,3] 0..1 float tensor (ComfyUI IMAGE); 16-bit grey keeps its
    precision."""
    import numpy as np
    if img.mode in _WIDE_MODES:
        grey = _wide_to_unit(img)
        return torch.from_numpy(np.repeat(grey[..., None], 3, axis=-1)).unsqueeze(0)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)
