"""Pillow's 8-bit resize (``Image.resize`` with BICUBIC or BILINEAR) as tensor operations.

Pillow resamples an 8-bit image in two passes (horizontal, then vertical), each a weighted sum
of neighbouring pixels with weights in fixed point (22 fractional bits) and the result rounded
and clipped to 0..255 after each pass. Done here the same way in int32 arithmetic, the result
equals Pillow's bit for bit, on any device, in batches, without a PIL round trip.

The weights are computed in float64 exactly as Pillow's ``precompute_coeffs`` does (same
operation order), then rounded to fixed point as ``normalize_coeffs_8bpc`` does.

Pass order: Pillow before 13 always resizes horizontally first; Pillow 13 runs the vertical
pass first when the height shrinks by more than twice as many pixels as the width. The two
orders differ by a rounding step, so ``order="auto"`` follows the installed Pillow (probed
once on a tiny image); the paper's reference implementation ran on Pillow < 13.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@functools.lru_cache(maxsize=64)
def coefficients(in_size: int, out_size: int, kind: str = "bicubic"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(first source index [out], fixed-point weights int32 [out, taps]) of one axis."""
    filt, base_support = FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    xx = np.arange(out_size, dtype=np.float64)
    center = (xx + 0.5) * scale
    # C's (int) cast truncates toward zero; the clamp makes the sign irrelevant below 0
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    ss = 1.0 / filterscale
    k = np.zeros((out_size, taps), dtype=np.float64)
    ww = np.zeros(out_size, dtype=np.float64)
    for x in range(taps):   # sequential sums, as the C loop adds them
        inside = x < xmax
        w = filt(((x + xmin).astype(np.float64) - center + 0.5) * ss)
        w = np.where(inside, w, 0.0)
        k[:, x] = w
        ww = ww + w
    k = np.where(ww[:, None] != 0.0, k / np.where(ww == 0.0, 1.0, ww)[:, None], k)
    one = float(1 << PRECISION_BITS)
    fixed = np.where(k < 0, np.trunc(-0.5 + k * one), np.trunc(0.5 + k * one))
    return xmin, fixed.astype(np.int32)


def _pass(x: torch.Tensor, dim: int, out_size: int, kind: str) -> torch.Tensor:
    """One resampling pass of uint8-valued int32 ``x`` along ``dim`` -> int32 in 0..255."""
    in_size = x.shape[dim]
    start, weights = coefficients(in_size, out_size, kind)
    dev = x.device
    start_t = torch.from_numpy(start).to(dev)
    w = torch.from_numpy(weights).to(dev)
    # the resampled axis first: each tap then gathers whole contiguous rows (kept in uint8,
    # a quarter of the memory traffic; the products are formed in int32)
    rows = x.to(torch.uint8).movedim(dim, 0).reshape(in_size, -1).contiguous()
    acc = torch.full((out_size, rows.shape[1]), 1 << (PRECISION_BITS - 1), dtype=torch.int32,
                     device=dev)
    for tap in range(weights.shape[1]):
        if not np.any(weights[:, tap]):
            continue
        # taps past a row's last source pixel have weight 0; clamp their index into range
        idx = (start_t + tap).clamp_(max=in_size - 1)
        acc.addcmul_(rows.index_select(0, idx), w[:, tap, None])
    out = (acc >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    moved = x.movedim(dim, 0).shape
    return out.reshape(out_size, *moved[1:]).movedim(0, dim)


ORDERS = ("auto", "horizontal-first", "pillow13")


@functools.lru_cache(maxsize=1)
def installed_pillow_order() -> str:
    """"pillow13" if the installed Pillow picks the vertical pass first for tall reductions,
    else "horizontal-first" (also when Pillow is missing)."""
    try:
        from PIL import Image
    except ImportError:
        return "horizontal-first"
    arr = (np.arange(40 * 9) * 97 % 251).astype(np.uint8).reshape(40, 9)
    got = np.asarray(Image.fromarray(arr).resize((8, 5), Image.BICUBIC))
    horizontal = resize_uint8(torch.from_numpy(arr), 5, 8, order="horizontal-first")
    return "horizontal-first" if np.array_equal(got, horizontal.numpy()) else "pillow13"


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int, order: str) -> bool:
    if order == "auto":
        order = installed_pillow_order()
    if order == "horizontal-first":
        return False
    return in_h >= out_h and (in_h - out_h) > (in_w - out_w) * 2


def resize_uint8(images: torch.Tensor, height: int, width: int, kind: str = "bicubic",
                 order: str = "auto") -> torch.Tensor:
    """[..., H, W] integer pixels (0..255) -> [..., height, width] as Pillow resizes them.

    Returns uint8. A pass is skipped when its side keeps its size, as in Pillow; ``order``
    picks the pass order (see the module notes).
    """
    if kind not in FILTERS:
        raise ValueError(f"unknown resample filter {kind!r}; use one of {', '.join(FILTERS)}")
    if order not in ORDERS:
        raise ValueError(f"unknown pass order {order!r}; use one of {', '.join(ORDERS)}")
    x = images.to(torch.uint8)
    h, w = x.shape[-2:]
    if vertical_first(h, w, height, width, order):
        if h != height:
            x = _pass(x, x.dim() - 2, height, kind)
        if w != width:
            x = _pass(x, x.dim() - 1, width, kind)
        return x
    if w != width:
        x = _pass(x, x.dim() - 1, width, kind)
    if h != height:
        x = _pass(x, x.dim() - 2, height, kind)
    return x
