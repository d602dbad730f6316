"""Box and mask maths of the subject masks, on plain tensors.

- ``merge_boxes_cxcywh``: the paper's rule, every detection merged into one enclosing box
  widened by 0.1 of the image size (no detection: the whole image); ``subject_boxes`` applies
  it, or keeps every box ("union"), with padding and clamping, in pixels.
- ``boxes_to_mask`` draws image masks (optional feathered edge); ``latent_mask`` area-averages
  a MASK to the VAE grid (factor 8) or FLUX's 2x2-packed token grid; ``paper_latent_box_mask``
  is the reference trainer's exact latent box rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.images import as_mask_batch
from ..errors import ScienceT2IError

MASK_MODES = ["merge", "union"]
MERGE_WIDEN = 0.1      # the enclosing box grows by 0.1 of the image size (reference rule)


def merge_boxes_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """The paper's merge, as the reference computes it (find_enclosing_box_cxcywh).

    boxes: [N,4] normalised (cx, cy, w, h). Returns (cx, cy, w, h) of the enclosing box with
    the same centre, each side grown by 0.1 when it is <= 0.9, else set to 1.0. No boxes ->
    (0.5, 0.5, 1, 1), the whole image. Not clamped: the box may reach past the image.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if boxes.numel() == 0:
        return torch.tensor([0.5, 0.5, 1.0, 1.0])
    x0, y0, x1, y1 = cxcywh_to_xyxy(boxes).unbind(-1)
    x0, y0, x1, y1 = x0.min(), y0.min(), x1.max(), y1.max()
    w, h = x1 - x0, y1 - y0
    w = torch.where(w <= 1.0 - MERGE_WIDEN, w + MERGE_WIDEN, torch.ones_like(w))
    h = torch.where(h <= 1.0 - MERGE_WIDEN, h + MERGE_WIDEN, torch.ones_like(h))
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, w, h])


def _box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    # imported here: torchvision takes a second to import, and only box maths needs it
    from torchvision.ops import box_convert
    return box_convert(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), in_fmt,
                       out_fmt)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (cx, cy, w, h) -> [N,4] (x0, y0, x1, y1), float32."""
    return _box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[N,4] (x0, y0, x1, y1) -> [N,4] (cx, cy, w, h), float32."""
    return _box_convert(boxes, "xyxy", "cxcywh")


def subject_boxes(boxes_xyxy: torch.Tensor, width: int, height: int, mode: str = "merge",
                  padding: int = 0) -> tuple[torch.Tensor, bool]:
    """The mask boxes for one image, in pixels (xyxy), clamped to the image.

    ``boxes_xyxy``: detections [N,4] in pixels. "merge": the paper's one enclosing box;
    "union": each box. ``padding`` pixels are added on every side (after merging). With no
    detection the whole image is returned and the flag says so (the paper's fallback).
    """
    if mode not in MASK_MODES:
        raise ScienceT2IError(f"mask mode {mode!r} is unknown; use one of {MASK_MODES}.")
    if padding < 0:
        raise ScienceT2IError(f"padding must be >= 0 pixels, got {padding}.")
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    whole = torch.tensor([[0.0, 0.0, float(width), float(height)]])
    if boxes.shape[0] == 0:
        return whole, True
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    if mode == "merge":
        norm = boxes / scale
        out = cxcywh_to_xyxy(merge_boxes_cxcywh(xyxy_to_cxcywh(norm))) * scale
    else:
        out = boxes.clone()
    out = out + torch.tensor([-padding, -padding, padding, padding], dtype=torch.float32)
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out, False


def boxes_to_mask(boxes_xyxy: torch.Tensor, height: int, width: int,
                  feather: float = 0.0) -> torch.Tensor:
    """An [H,W] mask of pixel boxes (xyxy): 1 for pixels whose centre lies in a box.

    With ``feather`` > 0 the value rises linearly from 0 at a box edge to 1 at ``feather``
    pixels inside it (measured from the pixel centre); edges lying on the image border are not
    faded. Several boxes combine by maximum.
    """
    if feather < 0:
        raise ScienceT2IError(f"feather must be >= 0 pixels, got {feather}.")
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5
    mask = torch.zeros(height, width)
    for x0, y0, x1, y1 in torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4).tolist():
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        if feather > 0:
            big = float(max(height, width)) * 4
            # distance from each pixel centre to each edge that is not on the image border
            d_left = (xs - x0) if x0 > 0 else torch.full_like(xs, big)
            d_right = (x1 - xs) if x1 < width else torch.full_like(xs, big)
            d_top = (ys - y0) if y0 > 0 else torch.full_like(ys, big)
            d_bottom = (y1 - ys) if y1 < height else torch.full_like(ys, big)
            dist = torch.minimum(torch.minimum(d_left, d_right), torch.minimum(d_top, d_bottom))
            value = (dist / feather).clamp(0, 1) * inside
        else:
            value = inside.float()
        mask = torch.maximum(mask, value)
    return mask


# ============================================================================= latent masks

def latent_mask(mask: torch.Tensor, vae_factor: int = 8, packed: bool = False,
                dilation: int = 0) -> torch.Tensor:
    """A MASK [B,H,W] (or [H,W]) on the latent grid by area averaging: [B, H//f, W//f].

    Each latent cell is the mean of its f x f pixel block (pixels beyond the last whole block
    are dropped, as VAE encoding crops to a multiple of f). ``packed`` gives FLUX's 2x2-packed
    token grid [B, H//(2f), W//(2f)]; ``.flatten(1)`` is then in the packed sequence order.
    ``dilation`` grows the mask by that many cells (a max filter).
    """
    mask = as_mask_batch(mask)
    if vae_factor < 1:
        raise ScienceT2IError(f"vae_factor must be >= 1, got {vae_factor}.")
    if dilation < 0:
        raise ScienceT2IError(f"dilation must be >= 0 cells, got {dilation}.")
    cell = vae_factor * (2 if packed else 1)
    _, h, w = mask.shape
    gh, gw = h // cell, w // cell
    if gh == 0 or gw == 0:
        raise ScienceT2IError(
            f"a {h}x{w} mask is smaller than one latent cell ({cell}x{cell} pixels); the image "
            "it came from is too small for this VAE factor/packing.")
    grid = F.avg_pool2d(mask[:, None, : gh * cell, : gw * cell], cell)[:, 0]
    if dilation:
        k = 2 * dilation + 1
        grid = F.max_pool2d(grid[:, None], k, stride=1, padding=dilation)[:, 0]
    return grid


def paper_latent_box_mask(boxes_cxcywh: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference trainer's latent box mask: [B, height, width] of 0/1.

    boxes: [B,4] normalised (cx, cy, w, h) as merged by ``merge_boxes_cxcywh``. In latent
    pixel coordinates x1 = (cx - w/2) * width, etc.; rows int(y1)..int(y2) and columns
    int(x1)..int(x2) are set (int truncates toward zero; the end is exclusive, as the
    reference's slice). One difference on purpose: a negative start is clamped to 0, where
    the reference's Python slice would count it from the far edge and empty the mask of a
    subject touching the top or left border.
    """
    boxes = torch.as_tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4)
    out = torch.zeros(boxes.shape[0], height, width)
    for i, (cx, cy, w, h) in enumerate(boxes.tolist()):
        x1, x2 = (cx - w / 2) * width, (cx + w / 2) * width
        y1, y2 = (cy - h / 2) * height, (cy + h / 2) * height
        out[i, max(int(y1), 0):max(int(y2), 0), max(int(x1), 0):max(int(x2), 0)] = 1.0
    return out
