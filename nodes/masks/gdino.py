"""GroundingDINO: loading and detection.

``load_grounding_dino`` reads a transformers GroundingDino directory
(models/grounding-dino/<name>/, or a hub id downloaded there) or the original ``.pth`` +
``.cfg.py`` release converted into the same transformers model (``gdino_original``); both
answer one ``detect``, with GroundingDINO's caption convention and the paper's thresholds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import _comfy
from ..core import hub
from ..core.images import as_rgb_batch
from ..errors import ScienceT2IError
from .boxes import merge_boxes_cxcywh, xyxy_to_cxcywh

DEFAULT_GDINO = "IDEA-Research/grounding-dino-tiny"
HUB_MODELS = ["IDEA-Research/grounding-dino-tiny", "IDEA-Research/grounding-dino-base"]
BOX_THRESHOLD = 0.35   # the paper's (and GroundingDINO's demo) settings
TEXT_THRESHOLD = 0.25


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

    def bounding_boxes(self) -> list[dict[str, Any]]:
        """Core's BOUNDING_BOX values for this image: one {x, y, width, height} in pixels per
        detection (top-left corner), with its score and phrase, as core's detectors give."""
        return [{"x": b[0], "y": b[1], "width": b[2] - b[0], "height": b[3] - b[1],
                 "score": float(s), "label": p}
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
    path = hub.local_model("grounding-dino", name, marker="config.json")
    if path is None:
        if hub.looks_like_hub_id(name):
            path = download_grounding_dino(name)
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


HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]  # a transformers GroundingDino folder


def download_grounding_dino(repo_id: str) -> Path:
    """A hub GroundingDINO into models/grounding-dino/<repo name> (atomically)."""
    return hub.download_model("grounding-dino", repo_id, HUB_PATTERNS, "GroundingDINO model",
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
