"""Drawing a score label onto an IMAGE, so the value is visible in ComfyUI's preview.

The label is rendered by PIL as coverage masks and blended in float, so pixels outside the
label keep their exact values (no 8-bit round trip of the whole picture).
"""
from __future__ import annotations

import torch

from ..errors import ScienceT2IError

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "middle")


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def label_origin(position: str, w: int, h: int, bw: int, bh: int) -> tuple[int, int]:
    """Top-left corner of a bw x bh box at ``position``: "<top|middle|bottom>-<left|center|
    right>" or a bare "middle" / "center" for the centre of the image."""
    parts = position.split("-")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    vertical = {"top": 0, "middle": (h - bh) // 2, "center": (h - bh) // 2, "bottom": h - bh}
    horizontal = {"left": 0, "middle": (w - bw) // 2, "center": (w - bw) // 2, "right": w - bw}
    if len(parts) != 2 or parts[0] not in vertical or parts[1] not in horizontal:
        raise ScienceT2IError(f"unknown label position {position!r}; use top-left, top-right, "
                              "bottom-left, bottom-right, middle, or e.g. middle-left.")
    return horizontal[parts[1]], vertical[parts[0]]


def draw_label(image: torch.Tensor, text: str, position: str = "top-left",
               font_size: int = 0, box_opacity: float = 0.6) -> torch.Tensor:
    """One [H,W,3] 0..1 image -> a copy with ``text`` on a dark box in a corner.

    ``font_size`` 0 picks one from the image size (1/14 of the shorter side, at least 10 px).
    """
    from PIL import Image, ImageDraw
    h, w = int(image.shape[0]), int(image.shape[1])
    size = font_size or max(10, min(h, w) // 14)
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    bw, bh = min(w, right - left + 2 * pad), min(h, bottom - top + 2 * pad)
    x0, y0 = label_origin(position, w, h, bw, bh)
    box = Image.new("L", (w, h), 0)
    ImageDraw.Draw(box).rectangle([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=255)
    glyphs = Image.new("L", (w, h), 0)
    ImageDraw.Draw(glyphs).text((x0 + pad - left, y0 + pad - top), text, fill=255, font=font)
    dev = image.device
    a_box = torch.frombuffer(bytearray(box.tobytes()), dtype=torch.uint8).view(h, w, 1)
    a_txt = torch.frombuffer(bytearray(glyphs.tobytes()), dtype=torch.uint8).view(h, w, 1)
    a_box = a_box.to(dev, torch.float32) / 255.0 * box_opacity
    a_txt = a_txt.to(dev, torch.float32) / 255.0
    out = image.float() * (1.0 - a_box)
    return out * (1.0 - a_txt) + a_txt  # white text


def overlay_scores(images: torch.Tensor, labels: list[str], position: str = "top-left",
                   font_size: int = 0) -> torch.Tensor:
    """[B,H,W,3] images and one label per image -> labelled copies."""
    return torch.stack([draw_label(img, lab, position, font_size)
                        for img, lab in zip(images, labels)])
