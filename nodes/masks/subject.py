"""Subject masks for an image batch: detect the subject, turn the boxes into masks, draw a
preview. The rollouts of stage 2 and the Subject Mask node run this same code."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core.images import as_rgb_batch, from_pil, to_pil
from ..errors import ScienceT2IError
from .boxes import MASK_MODES, boxes_to_mask, subject_boxes
from .gdino import BOX_THRESHOLD, TEXT_THRESHOLD, Detection, GroundingDinoModel


@dataclass
class SubjectMasks:
    mask: torch.Tensor                 # [B,H,W] float32
    detections: list[Detection]
    mask_boxes: list[torch.Tensor]     # per image, [K,4] pixel xyxy used for the mask
    fallback: list[bool] = field(default_factory=list)  # True where nothing was detected

    def to_json(self, mode: str) -> str:
        items = []
        for i, (det, mb, fb) in enumerate(zip(self.detections, self.mask_boxes, self.fallback)):
            items.append({"index": i, "width": det.width, "height": det.height,
                          "detections": det.to_json(), "mode": mode,
                          "mask_boxes": [[round(v, 2) for v in b] for b in mb.tolist()],
                          "merged_cxcywh": [round(v, 5) for v in det.merged_box_cxcywh().tolist()],
                          "no_detection": fb})
        return json.dumps(items)


def masks_from_detections(detections: Sequence[Detection], mode: str = "merge",
                          padding: int = 0, feather: float = 0.0) -> SubjectMasks:
    """Image masks [B,H,W] for a batch; every image handled on its own."""
    if not detections:
        raise ScienceT2IError("no images: the batch is empty.")
    masks, boxes, fallback = [], [], []
    for det in detections:
        b, fb = subject_boxes(det.boxes, det.width, det.height, mode, padding)
        masks.append(boxes_to_mask(b, det.height, det.width, feather))
        boxes.append(b)
        fallback.append(fb)
    sizes = {tuple(m.shape) for m in masks}
    if len(sizes) != 1:
        raise ScienceT2IError(f"images of different sizes {sorted(sizes)} cannot form one MASK "
                              "batch; resize them to one size first.")
    return SubjectMasks(torch.stack(masks), list(detections), boxes, fallback)


def subject_masks(model: GroundingDinoModel, images: torch.Tensor, subject: str | Sequence[str],
                  box_threshold: float = BOX_THRESHOLD, text_threshold: float = TEXT_THRESHOLD,
                  mode: str = "merge", padding: int = 0, feather: float = 0.0) -> SubjectMasks:
    """Detect ``subject`` in each image and turn the boxes into masks (the rollout path)."""
    if mode not in MASK_MODES:
        raise ScienceT2IError(f"mask mode {mode!r} is unknown; use one of {MASK_MODES}.")
    dets = model.detect(images, subject, box_threshold, text_threshold)
    return masks_from_detections(dets, mode, padding, feather)


def draw_preview(images: torch.Tensor, result: SubjectMasks) -> torch.Tensor:
    """IMAGE [B,H,W,3]: the mask tinted in, detections in red with phrase and score, the mask
    boxes in green."""
    from PIL import ImageDraw
    batch = as_rgb_batch(images, "images")
    out = []
    for i in range(batch.shape[0]):
        tint = torch.tensor([0.1, 0.9, 0.2])
        m = result.mask[i][..., None]
        img = to_pil(batch[i] * (1 - 0.35 * m) + tint * 0.35 * m)
        draw = ImageDraw.Draw(img)
        for x0, y0, x1, y1 in result.mask_boxes[i].tolist():
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(40, 220, 60), width=2)
        det = result.detections[i]
        for (x0, y0, x1, y1), s, p in zip(det.boxes.tolist(), det.scores.tolist(), det.phrases):
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(230, 40, 40), width=2)
            label = f"{p or '?'} {s:.2f}"
            tx, ty = x0 + 2, max(0, y0 - 12) if y0 >= 12 else y0 + 2
            bbox = draw.textbbox((tx, ty), label)
            draw.rectangle(bbox, fill=(230, 40, 40))
            draw.text((tx, ty), label, fill=(255, 255, 255))
        if result.fallback[i]:
            draw.text((4, 4), "no detection: whole image", fill=(255, 255, 0))
        out.append(from_pil(img))
    return torch.cat(out, 0)
