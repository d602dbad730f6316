"""Subject masks: GroundingDINO detection -> boxes -> image mask -> latent mask.

The paper's masked online fine-tuning queries GroundingDINO with the prompt's subject, merges
the detections into one enclosing box widened by 0.1 of the image size (no detection: the
whole image), and restricts the policy update to that box in latent space.

- ``load_grounding_dino``: a transformers GroundingDino directory (models/grounding-dino/<name>/,
  or a hub id downloaded there), or the original ``.pth`` + ``.cfg.py`` release converted into
  the same transformers model (nodes/gdino_original.py). One ``detect`` for both.
- box maths on normalised coordinates: ``merge_boxes_cxcywh`` is the paper's rule;
  ``subject_boxes`` applies it (or the union of boxes) with padding and clamping.
- ``boxes_to_mask`` draws image masks (optional feathered edge); ``latent_mask`` area-averages
  a MASK to the VAE grid (factor 8) or FLUX's 2x2-packed token grid; ``paper_latent_box_mask``
  is the reference trainer's exact latent box rule.
- Node classes at the bottom: GroundingDINO Loader, Subject Mask, Mask to Latent Mask.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from . import _comfy, hub
from .errors import ScienceT2IError
from .images import as_mask_batch, as_rgb_batch, from_pil, to_pil

DEFAULT_GDINO = "IDEA-Research/grounding-dino-tiny"
HUB_MODELS = ["IDEA-Research/grounding-dino-tiny", "IDEA-Research/grounding-dino-base"]
BOX_THRESHOLD = 0.35   # the paper's (and GroundingDINO's demo) settings
TEXT_THRESHOLD = 0.25
MERGE_WIDEN = 0.1      # the enclosing box grows by 0.1 of the image size (reference rule)
MASK_MODES = ["merge", "union"]


# ============================================================================= box maths

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


# ============================================================================= detection

@dataclass
class Detection:
    """Detections in one image: boxes [N,4] xyxy in pixels, scores [N], phrases."""
    boxes: torch.Tensor
    scores: torch.Tensor
    phrases: list[str]
    width: int
    height: int

    def boxes_cxcywh(self) -> torch.Tensor:
        """Normalised (cx, cy, w, h), the original GroundingDINO's output convention."""
        scale = torch.tensor([self.width, self.height, self.width, self.height], dtype=torch.float32)
        return xyxy_to_cxcywh(self.boxes / scale)

    def merged_box_cxcywh(self) -> torch.Tensor:
        """The paper's merged box for training (``paper_latent_box_mask``'s input)."""
        return merge_boxes_cxcywh(self.boxes_cxcywh())

    def to_json(self) -> list[dict[str, Any]]:
        return [{"box": [round(v, 2) for v in b], "score": round(float(s), 4), "phrase": p}
                for b, s, p in zip(self.boxes.tolist(), self.scores.tolist(), self.phrases)]


def prepare_caption(text: str) -> str:
    """GroundingDINO's caption convention: lower case, phrases separated and ended by ' .'
    ("ink stain, glass" -> "ink stain . glass .")."""
    if not isinstance(text, str):
        raise ScienceT2IError(f"subject text must be a string, got {type(text).__name__}.")
    parts = [p.strip() for chunk in text.lower().split(",") for p in chunk.split(".")]
    parts = [" ".join(p.split()) for p in parts if p.strip()]
    if not parts:
        raise ScienceT2IError(
            "subject text is empty: give the object to find, e.g. 'glass' or 'ink stain' (the "
            "'object' field of a Science-T2I prompt, or the Science Prompt Builder's subject).")
    return " . ".join(parts) + " ."


def check_thresholds(box_threshold: float, text_threshold: float) -> None:
    for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ScienceT2IError(
                f"{name} must be between 0 and 1 (a probability), got {value!r}; the paper uses "
                f"box {BOX_THRESHOLD} and text {TEXT_THRESHOLD}.")


_SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"}


def _clean_phrase(label: str) -> str:
    words = [w for w in str(label).split() if w not in _SPECIAL]
    return " ".join(words).strip(" .")


class GroundingDinoModel:
    """A loaded GroundingDINO (either backend) with one ``detect``."""

    def __init__(self, model: torch.nn.Module, processor: Any, name: str,
                 device: torch.device, dtype: torch.dtype, backend: str, image_size: int = 0):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.name = name
        self.backend = backend  # "transformers" or "original"
        self.dtype = dtype
        self.max_text_len = int(getattr(model.config, "max_text_len", 256))
        # shorter side / longer-side cap of the resize (the release's 800 / 1333 ratio)
        self.resize = ({"shortest_edge": image_size, "longest_edge": image_size * 1333 // 800}
                       if image_size else None)
        self.handle = _comfy.wrap_model(self.model, device)

    @property
    def device(self) -> torch.device:
        return self.handle.load_device

    def __repr__(self) -> str:
        return f"GroundingDinoModel({self.name!r}, backend={self.backend})"

    def tokenize(self, caption: str) -> dict[str, torch.Tensor]:
        enc = self.processor.tokenizer([caption], return_tensors="pt")
        n = int(enc["input_ids"].shape[1])
        if n > self.max_text_len:
            raise ScienceT2IError(
                f"subject text is {n} tokens long; GroundingDINO reads at most "
                f"{self.max_text_len} (with [CLS]/[SEP]). Give just the subject, e.g. 'glass'.")
        return enc

    @torch.inference_mode()
    def detect(self, images: torch.Tensor | Sequence[torch.Tensor], text: str | Sequence[str],
               box_threshold: float = BOX_THRESHOLD,
               text_threshold: float = TEXT_THRESHOLD) -> list[Detection]:
        """Detect ``text`` in each image. images: IMAGE [B,H,W,C] or a list of [H,W,C] /
        [1,H,W,C] tensors (sizes may differ); text: one subject for all images, or a list with
        one per image (rollouts of several prompts). Each image is processed on its own;
        progress is reported and a cancel checked per image."""
        check_thresholds(box_threshold, text_threshold)
        batch = _image_list(images)
        texts = [text] * len(batch) if isinstance(text, str) else list(text)
        if len(texts) != len(batch):
            raise ScienceT2IError(f"{len(texts)} subjects for {len(batch)} images: give one "
                                  "subject for all images or one per image.")
        encoded: dict[str, dict] = {}
        for t in texts:  # validate every subject before any model work
            caption = prepare_caption(t)
            if caption not in encoded:
                encoded[caption] = self.tokenize(caption)
        _comfy.load_to_device(self.handle)
        results: list[Detection] = []
        with _comfy.Progress(len(batch), desc="GroundingDINO") as bar:
            for image, t in zip(batch, texts):
                _comfy.check_interrupt()
                enc = encoded[prepare_caption(t)]
                results.append(self._detect_one(image, enc, box_threshold, text_threshold))
                bar.update(1)
        return results

    def _detect_one(self, image: torch.Tensor, enc: dict, box_threshold: float,
                    text_threshold: float) -> Detection:
        h, w = int(image.shape[0]), int(image.shape[1])
        # Channels-first float in 0..1 straight to the processor: no uint8/PIL round trip.
        kwargs = {"size": self.resize} if self.resize else {}
        pix = self.processor.image_processor(images=[image.permute(2, 0, 1)], do_rescale=False,
                                             return_tensors="pt", **kwargs)
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        pixel_values = pix["pixel_values"].to(self.device, self.dtype)
        pixel_mask = pix.get("pixel_mask")
        out = self.model(pixel_values=pixel_values,
                         pixel_mask=pixel_mask.to(self.device) if pixel_mask is not None else None,
                         **inputs)
        out.logits = out.logits.float()
        out.pred_boxes = out.pred_boxes.float()
        res = self.processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[(h, w)])[0]
        boxes = res["boxes"].float().cpu().reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = res["text_labels"] if "text_labels" in res else res.get("labels", [])
        return Detection(boxes=boxes, scores=res["scores"].float().cpu().reshape(-1),
                         phrases=[_clean_phrase(p) for p in labels], width=w, height=h)


def _image_list(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        batch = as_rgb_batch(images, "images")
        return [batch[i] for i in range(batch.shape[0])]
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ScienceT2IError("images: the image batch is empty; connect at least one image.")
    return [as_rgb_batch(im, f"images[{i}]")[0] for i, im in enumerate(images)]


# ============================================================================= loading

def load_grounding_dino(model: str | os.PathLike = DEFAULT_GDINO,
                        device: str | torch.device | None = None, dtype: str = "auto",
                        image_size: int = 0) -> GroundingDinoModel:
    """Load GroundingDINO from a name in models/grounding-dino, any path, or a hub id.

    A directory with config.json is a transformers model (IDEA-Research/grounding-dino-*
    layout); a ``.pth`` (or original-format ``.safetensors``) is the original release, read
    with its ``.cfg.py``. A hub id not found locally is downloaded into
    models/grounding-dino/<name>/. ``image_size`` > 0 overrides the processor's shorter-side
    resize (800 by default; smaller is faster and coarser).
    """
    from .gdino_original import load_original_checkpoint
    if dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ScienceT2IError(f"dtype {dtype!r} is unknown; use auto, fp32, fp16 or bf16.")
    name = str(model)
    path = _comfy.resolve_model("grounding-dino", name) or _local_hub_copy(name)
    if path is None:
        if _looks_like_hub_id(name):
            path = _download(name)
        else:
            folders = ", ".join(str(p) for p in _comfy.folder_paths_for("grounding-dino"))
            raise ScienceT2IError(
                f"GroundingDINO model {name!r} not found in {folders}. Put a transformers "
                f"GroundingDino folder or groundingdino_swint_ogc.pth + "
                f"GroundingDINO_SwinT_OGC.cfg.py there, or give a hub id such as {DEFAULT_GDINO}.")
    dev = torch.device(device) if device is not None else _comfy.torch_device()
    # "auto" is fp32 everywhere: the model is small (172M parameters for Swin-T), the
    # reference detects in fp32, and its thresholds sit on sigmoid scores near 0.25-0.35.
    torch_dtype = torch.float32 if dtype == "auto" else _comfy.pick_dtype(dev, dtype)
    if path.is_dir():
        net, processor = _load_transformers_dir(path)
        backend = "transformers"
    elif path.suffix.lower() in (".pth", ".pt", ".bin", ".safetensors"):
        net, processor = load_original_checkpoint(path)
        backend = "original"
    else:
        raise ScienceT2IError(
            f"{path} is neither a transformers GroundingDino folder (with config.json) nor an "
            "original .pth checkpoint.")
    if image_size and image_size < 32:
        raise ScienceT2IError(f"image_size must be 0 (model default) or >= 32, got {image_size}.")
    net = net.to(dtype=torch_dtype)
    return GroundingDinoModel(net, processor, name=name, device=dev, dtype=torch_dtype,
                              backend=backend, image_size=int(image_size))


def list_local_models() -> list[str]:
    """Loadable entries of models/grounding-dino: transformers folders and original
    checkpoints (not the files inside those folders, nor a BERT folder kept beside a .pth)."""
    local = _comfy.list_models("grounding-dino", (".pth", ".safetensors"))
    dirs = [n for n in local if not n.endswith((".pth", ".safetensors"))]
    keep = []
    for n in local:
        if any(n.startswith(d + "/") for d in dirs):
            continue
        if n in dirs and n.split("/")[-1].lower().startswith("bert"):
            continue
        keep.append(n)
    return keep


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).expanduser().exists() \
        and not name.startswith((".", "/", "~"))


def _local_hub_copy(name: str) -> Path | None:
    """A hub id already downloaded into models/grounding-dino/<repo name>/."""
    if not _looks_like_hub_id(name):
        return None
    for root in _comfy.folder_paths_for("grounding-dino"):
        cand = root / name.split("/")[-1]
        if (cand / "config.json").is_file():
            return cand
    return None


HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]  # a transformers GroundingDino folder


def _download(repo_id: str) -> Path:
    target = _comfy.default_folder("grounding-dino") / repo_id.split("/")[-1]
    return hub.download_repo(repo_id, target, HUB_PATTERNS, "GroundingDINO model",
                             required="config.json")


def _load_transformers_dir(path: Path):
    from transformers import AutoProcessor, GroundingDinoForObjectDetection
    if not (path / "config.json").is_file():
        raise ScienceT2IError(f"{path} has no config.json: not a transformers GroundingDino folder.")
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ScienceT2IError(
            f"cannot read the GroundingDINO processor/tokenizer files in {path} ({exc}); the "
            "folder needs preprocessor_config.json (or processor_config.json) and the BERT "
            "tokenizer files of the release.") from exc
    try:
        model = GroundingDinoForObjectDetection.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise ScienceT2IError(
            f"cannot load the GroundingDINO weights in {path} ({str(exc).splitlines()[0]}); the "
            "files are missing, corrupt or only partly downloaded: download the folder "
            "again.") from exc
    return model.eval(), processor


# ============================================================================= masks for a batch

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


# ============================================================================= nodes

class ScienceT2I_GroundingDinoLoader:
    """Load GroundingDINO from models/grounding-dino (transformers folder or original .pth)."""

    @classmethod
    def INPUT_TYPES(cls):
        names = list_local_models()
        choices = names + [h for h in HUB_MODELS if h not in names]
        return {"required": {
            "model_name": (choices, {"default": choices[0] if names else DEFAULT_GDINO,
                                     "tooltip": "A folder in models/grounding-dino (Hugging Face "
                                                "layout), an original .pth with its .cfg.py, or a "
                                                "hub id downloaded there on first use."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto"}),
        }, "optional": {
            "image_size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 32,
                                   "tooltip": "Shorter-side resize before detection; 0 = the "
                                              "model's (800). Smaller is faster."}),
        }}

    RETURN_TYPES = ("GDINO_MODEL",)
    RETURN_NAMES = ("gdino_model",)
    FUNCTION = "load"
    CATEGORY = "Science-T2I/Masks"

    def load(self, model_name: str, dtype: str = "auto", image_size: int = 0):
        return (load_grounding_dino(model_name, dtype=dtype, image_size=image_size),)


class ScienceT2I_SubjectMask:
    """Detect the subject with GroundingDINO and mask it as the paper does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "gdino_model": ("GDINO_MODEL",),
            "image": ("IMAGE",),
            "subject": ("STRING", {"default": "", "multiline": False,
                                   "tooltip": "What to find, e.g. 'glass' or 'ink stain'; "
                                              "separate several with commas."}),
            "box_threshold": ("FLOAT", {"default": BOX_THRESHOLD, "min": 0.0, "max": 1.0,
                                        "step": 0.01}),
            "text_threshold": ("FLOAT", {"default": TEXT_THRESHOLD, "min": 0.0, "max": 1.0,
                                         "step": 0.01}),
            "mode": (MASK_MODES, {"default": "merge",
                                  "tooltip": "merge: one enclosing box widened by 10% (the "
                                             "paper); union: every box."}),
            "padding": ("INT", {"default": 0, "min": 0, "max": 4096}),
            "feather": ("INT", {"default": 0, "min": 0, "max": 1024}),
        }}

    RETURN_TYPES = ("MASK", "STRING", "IMAGE")
    RETURN_NAMES = ("mask", "boxes_json", "preview")
    FUNCTION = "run"
    CATEGORY = "Science-T2I/Masks"

    def run(self, gdino_model, image, subject, box_threshold=BOX_THRESHOLD,
            text_threshold=TEXT_THRESHOLD, mode="merge", padding=0, feather=0):
        if not isinstance(gdino_model, GroundingDinoModel):
            raise ScienceT2IError("gdino_model: connect a GroundingDINO Loader node.")
        result = subject_masks(gdino_model, image, subject, box_threshold, text_threshold,
                               mode, int(padding), float(feather))
        found = sum(not f for f in result.fallback)
        summary = f"{found}/{len(result.fallback)} image(s) with '{subject}' detected"
        return {"ui": {"text": [summary]},
                "result": (result.mask, result.to_json(mode), draw_preview(image, result))}


class ScienceT2I_MaskToLatentMask:
    """A MASK on the latent grid (area average): VAE factor 8, optionally FLUX 2x2 packing."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK",),
            "vae_factor": ("INT", {"default": 8, "min": 1, "max": 64}),
            "packing": (["none", "flux 2x2"], {"default": "none"}),
            "dilation": ("INT", {"default": 0, "min": 0, "max": 64,
                                 "tooltip": "Grow the mask by this many latent cells."}),
        }}

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("latent_mask",)
    FUNCTION = "run"
    CATEGORY = "Science-T2I/Masks"

    def run(self, mask, vae_factor=8, packing="none", dilation=0):
        if packing not in ("none", "flux 2x2"):
            raise ScienceT2IError(f"packing {packing!r} is unknown; use 'none' or 'flux 2x2'.")
        return (latent_mask(mask, int(vae_factor), packing == "flux 2x2", int(dilation)),)


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_GroundingDinoLoader": ScienceT2I_GroundingDinoLoader,
    "ScienceT2I_SubjectMask": ScienceT2I_SubjectMask,
    "ScienceT2I_MaskToLatentMask": ScienceT2I_MaskToLatentMask,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_GroundingDinoLoader": "GroundingDINO Loader",
    "ScienceT2I_SubjectMask": "Subject Mask",
    "ScienceT2I_MaskToLatentMask": "Mask to Latent Mask",
}
