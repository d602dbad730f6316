"""SciScore: the Science-T2I reward model, for graphs, the CLI, evaluation and training.

score(prompt, image) = exp(logit_scale) * cos(text_emb(prompt), image_emb(image)), exactly as
the paper and its reference code define it; preference probabilities are the softmax of the
scores over the candidate images of one prompt. The checkpoint is a transformers CLIPModel
(``Jialuo21/SciScore``) or an open_clip ViT-H-14 safetensors file.

Images are ComfyUI IMAGE tensors, preprocessed as tensors (see clip_preprocess.py), encoded in
batches with progress and a cancel check per batch; text embeddings are cached per model and
prompt. Inside ComfyUI the model is a ModelPatcher that comfy.model_management loads and
offloads, like ComfyUI's own clip_vision.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from . import _comfy, clip_onednn
from .clip_preprocess import MODES as PREPROCESS_MODES
from .clip_preprocess import preprocess_images
from .errors import ScienceT2IError
from .images import as_rgb_batch
from .sciscore_loading import (DEFAULT_SCISCORE, load_clip_directory, load_open_clip_file,
                               resolve_source)

log = logging.getLogger("science_t2i")

__all__ = ["DEFAULT_SCISCORE", "SciScoreModel", "load_sciscore", "preprocess_images",
           "load_clip_directory", "preference_probabilities", "parse_prompts", "rank_order"]

TEXT_CACHE_SIZE = 4096
ImagesArg = torch.Tensor | Sequence[torch.Tensor]


def preference_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Softmax of the scores over the candidate images of one prompt (last dimension)."""
    return torch.softmax(scores.float(), dim=-1)


def rank_order(scores: torch.Tensor) -> list[int]:
    """Indices best first; ties keep the input order (stable)."""
    return torch.sort(scores.float(), descending=True, stable=True).indices.tolist()


def parse_prompts(prompts: str | Sequence[str], n_images: int,
                  split_lines: bool = False) -> list[str]:
    """One prompt per image. ``prompts`` is one prompt for all images or one per image;
    with ``split_lines`` a single string holding several lines is one prompt per line."""
    if isinstance(prompts, str):
        items = [ln.strip() for ln in prompts.splitlines()] if split_lines else [prompts.strip()]
        items = [p for p in items if p] or [""]
    else:
        items = [p.strip() if isinstance(p, str) else p for p in prompts]
    if not items or any(not isinstance(p, str) or not p for p in items):
        raise ScienceT2IError(
            "the prompt is empty: SciScore compares an image with a text, so give the "
            "(implicit) prompt the image was generated from.")
    if len(items) == 1:
        return items * n_images
    if len(items) != n_images:
        raise ScienceT2IError(
            f"got {len(items)} prompts for {n_images} images: give one prompt for all images, "
            f"or exactly one per image{' (one per line)' if split_lines else ''}.")
    return items


class _HFBackend:
    """A transformers CLIPModel (the official SciScore release)."""

    def __init__(self, clip: Any, tokenizer: Any):
        self.module, self.tokenizer = clip, tokenizer
        self.max_length = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                              clip.config.text_config.max_position_embeddings)

    def logit_scale(self) -> torch.Tensor:
        return self.module.logit_scale

    def image_features(self, pixels: torch.Tensor, onednn: bool = False) -> torch.Tensor:
        out = clip_onednn.hf_image_features(self.module, pixels) if onednn else None
        return out if out is not None else _embedding(
            self.module.get_image_features(pixel_values=pixels))

    def token_count(self, prompt: str) -> int:
        """Tokens of the whole prompt, start and end tokens included (no truncation)."""
        return len(self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])

    def text_features(self, prompts: list[str], device: torch.device,
                      onednn: bool = False) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        out = clip_onednn.hf_text_features(self.module, ids, mask) if onednn else None
        return out if out is not None else _embedding(
            self.module.get_text_features(input_ids=ids, attention_mask=mask))


class _OpenClipBackend:
    def __init__(self, model: Any, tokenizer: Any):
        self.module, self.tokenizer = model, tokenizer
        self.max_length = int(getattr(tokenizer, "context_length", 77) or 77)

    def token_count(self, prompt: str) -> int | None:
        encode = getattr(self.tokenizer, "encode", None)   # open_clip's SimpleTokenizer
        return len(encode(prompt)) + 2 if callable(encode) else None

    def logit_scale(self) -> torch.Tensor:
        return self.module.logit_scale

    def image_features(self, pixels: torch.Tensor, onednn: bool = False) -> torch.Tensor:
        out = clip_onednn.open_clip_image_features(self.module, pixels) if onednn else None
        return out if out is not None else self.module.encode_image(pixels)

    def text_features(self, prompts: list[str], device: torch.device,
                      onednn: bool = False) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(device)
        out = clip_onednn.open_clip_text_features(self.module, tokens) if onednn else None
        return out if out is not None else self.module.encode_text(tokens)


def _embedding(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projection; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class SciScoreModel:
    """A loaded SciScore (or any CLIP) scorer. Build it with ``load_sciscore``."""

    def __init__(self, backend: Any, *, name: str, image_size: int, crop_size: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device,
                 dtype: torch.dtype, batch_size: int = 16, compile: bool = False,
                 onednn: bool | str = "auto", preprocess: str = "exact",
                 convention: str = "transformers", rescale_factor: float = 1 / 255,
                 resample: str = "bicubic"):
        if batch_size < 1:
            raise ScienceT2IError(f"batch_size must be at least 1, got {batch_size}")
        self._backend = backend
        self.name = name
        self.image_size, self.crop_size = int(image_size), int(crop_size)
        self.mean, self.std = list(mean), list(std)
        if preprocess not in PREPROCESS_MODES:
            raise ScienceT2IError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}; "
                                  f"got {preprocess!r}.")
        # exact: the pixels CLIPImageProcessor (or open_clip's transform) gives the 8-bit image
        self.preprocess = preprocess
        self.convention, self.rescale_factor, self.resample = convention, rescale_factor, resample
        self.device, self.dtype = device, dtype
        self.batch_size = int(batch_size)
        # torch.compile of the image tower: opt-in, built on first use; any failure (no
        # compiler, an unsupported op) falls back to eager for the rest of the model's life
        self.compile = bool(compile)
        self._compiled: Any = None
        self._compile_failed = False
        # fp32 on CPU: both towers through oneDNN's fused kernels (clip_onednn.py) when forced
        # (True) or where "auto" finds them faster than PyTorch's forward (cpu_path); they
        # step aside by themselves elsewhere, and for good after any error
        if onednn not in (True, False, "auto"):
            raise ScienceT2IError(f"onednn must be True, False or 'auto'; got {onednn!r}.")
        self.onednn: bool | str = onednn if onednn == "auto" else bool(onednn)
        self._onednn_off = "onednn=False"  # why it is off, for cpu_path
        self.patcher = _comfy.wrap_model(backend.module, device, _comfy.offload_device())
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.dropped_tokens: dict[str, int] = {}   # prompt -> tokens past the tower's length

    @classmethod
    def from_clip(cls, clip: Any, tokenizer: Any, image_config: dict[str, Any], *,
                  name: str = "clip", device: torch.device | None = None,
                  batch_size: int = 16, compile: bool = False,
                  onednn: bool | str = "auto", preprocess: str = "exact") -> "SciScoreModel":
        """A scorer around a transformers CLIPModel already in memory (e.g. one being
        trained). ``image_config`` is the dict ``load_clip_directory`` returns."""
        dev = device if device is not None else next(clip.parameters()).device
        return cls(_HFBackend(clip, tokenizer), name=name, image_size=image_config["size"],
                   crop_size=image_config["crop_size"], mean=image_config["image_mean"],
                   std=image_config["image_std"], device=dev,
                   dtype=next(clip.parameters()).dtype, batch_size=batch_size, compile=compile,
                   onednn=onednn, preprocess=preprocess,
                   rescale_factor=image_config.get("rescale_factor", 1 / 255),
                   resample=image_config.get("resample", "bicubic"))

    # ------------------------------------------------------------------ properties

    @property
    def clip(self) -> Any:
        """The transformers CLIPModel (None for an open_clip checkpoint)."""
        return self._backend.module if isinstance(self._backend, _HFBackend) else None

    @property
    def module(self) -> torch.nn.Module:
        return self._backend.module

    @property
    def tokenizer(self) -> Any:
        return self._backend.tokenizer

    @property
    def logit_scale_exp(self) -> float:
        return float(self._backend.logit_scale().detach().float().exp().item())

    def __repr__(self) -> str:
        return (f"SciScoreModel({self.name!r}, device={self.device}, dtype={self.dtype}, "
                f"image_size={self.crop_size})")

    # ------------------------------------------------------------------ encoding

    def _ready(self) -> None:
        _comfy.load_to_device(self.patcher)  # ComfyUI may have offloaded it for another model

    def encode_images(self, images: ImagesArg) -> torch.Tensor:
        """IMAGE [B,H,W,C] or a list of [H,W,C]/[n,H,W,C] -> L2-normalised float32 [B,D] (CPU)."""
        views = images if _is_views(images) else image_views(images)
        batches = [views[i:i + self.batch_size] for i in range(0, len(views), self.batch_size)]
        self._ready()
        out = []
        with torch.inference_mode(), _comfy.Progress(len(batches), "SciScore images") as bar:
            for batch in batches:
                _comfy.check_interrupt()
                pixels = self._pixels(batch)
                emb = self._image_features(pixels).float()
                out.append(F.normalize(emb, dim=-1).cpu())
                bar.update(1)
        return torch.cat(out)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.compile and not self._compile_failed:
            try:
                if self._compiled is None:
                    # no weight freezing: the weights stay graph inputs, so training updates
                    # and ComfyUI's device moves are seen (moves recompile through guards)
                    self._compiled = torch.compile(self._backend.image_features)
                return self._compiled(pixels)
            except Exception as exc:  # compilation happens lazily, inside the first call
                self._compile_failed, self._compiled = True, None
                log.warning("SciScore: torch.compile of the image tower failed (%s: %s); "
                            "encoding without it", type(exc).__name__, exc)
        return self._onednn_or_plain(self._backend.image_features, pixels)

    def cpu_path(self) -> clip_onednn.Choice:
        """The forward scoring runs, ("onednn" | "pytorch", why). With onednn="auto" on fp32
        CPU weights, the first call (at the first scoring) decides by the CPU's capability
        and a measurement of one layer, once per process and thread count."""
        if self.onednn is True:
            return clip_onednn.Choice("onednn", "onednn=True (forced; fp32 weights on CPU only)")
        if self.onednn is False:
            return clip_onednn.Choice("pytorch", self._onednn_off)
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return clip_onednn.Choice("pytorch", f"{self.device.type} {self.dtype}: the oneDNN "
                                                 "path runs only fp32 weights on CPU")
        return clip_onednn.auto_choice(self.module)

    def _onednn_or_plain(self, features: Any, *args: Any) -> torch.Tensor:
        """``features(*args, onednn=True)`` when cpu_path says so (it runs PyTorch's forward
        itself where oneDNN does not apply); after a oneDNN error, PyTorch's forward for good."""
        if self.onednn and self.cpu_path().path == "onednn":
            try:
                return features(*args, onednn=True)
            except RuntimeError as exc:  # a oneDNN build or CPU that refuses a kernel
                self.onednn, self._onednn_off = False, f"the oneDNN towers failed ({exc})"
                log.warning("SciScore: the oneDNN towers failed (%s); encoding with "
                            "PyTorch's own forward", exc)
        return features(*args)

    def _pixels(self, batch: list[torch.Tensor]) -> torch.Tensor:
        def prep(x: torch.Tensor) -> torch.Tensor:
            return preprocess_images(x.to(self.device, non_blocking=True), self.image_size,
                                     self.mean, self.std, crop_size=self.crop_size,
                                     mode=self.preprocess, convention=self.convention,
                                     rescale_factor=self.rescale_factor, resample=self.resample)
        if all(v.shape == batch[0].shape for v in batch):
            pixels = prep(torch.cat(batch))
        else:
            pixels = torch.cat([prep(v) for v in batch])
        return pixels.to(self.dtype)

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised float32 [N,D] (CPU); each prompt is encoded once per model."""
        prompts = list(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        for p in missing:
            self._note_truncation(p)
        if missing:
            self._ready()
            with torch.inference_mode():
                for i in range(0, len(missing), self.batch_size):
                    _comfy.check_interrupt()
                    chunk = missing[i:i + self.batch_size]
                    emb = self._onednn_or_plain(self._backend.text_features, chunk, self.device)
                    emb = F.normalize(emb.float(), dim=-1).cpu()
                    for p, e in zip(chunk, emb):
                        self._text_cache[p] = e
        for p in prompts:
            self._text_cache.move_to_end(p)
        out = torch.stack([self._text_cache[p] for p in prompts])
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return out

    def _note_truncation(self, prompt: str) -> None:
        """CLIP reads at most ``max_length`` tokens: record and log how many a prompt loses."""
        count = getattr(self._backend, "token_count", lambda p: None)(prompt)
        limit = getattr(self._backend, "max_length", 77)
        if count is not None and count > limit and prompt not in self.dropped_tokens:
            self.dropped_tokens[prompt] = count - limit
            log.warning("SciScore: a prompt has %d tokens; CLIP reads the first %d, the last %d "
                        "are not scored: %.60s...", count, limit, count - limit, prompt)

    def truncation_lines(self, prompts: Sequence[str]) -> list[str]:
        """Summary lines for the prompts cut at the text tower's length."""
        limit = getattr(self._backend, "max_length", 77)
        return [f"note: prompt cut at {limit} tokens, {self.dropped_tokens[p]} dropped: "
                f"{p[:50]}..." for p in dict.fromkeys(prompts) if p in self.dropped_tokens]

    def clear_text_cache(self) -> None:
        """Forget cached text embeddings (needed after the weights change, e.g. training)."""
        self._text_cache.clear()

    # ------------------------------------------------------------------ scoring

    def score(self, images: ImagesArg, prompts: str | Sequence[str]) -> torch.Tensor:
        """SciScore of each image against its prompt: float32 [B] on CPU.

        ``prompts``: one string for every image, or a list with one per image.
        """
        views = image_views(images)  # validate the images before any model work
        texts = parse_prompts(prompts, len(views))
        text_emb = self.encode_texts(texts)
        image_emb = self.encode_images(_Views(views))
        return self.logit_scale_exp * (text_emb * image_emb).sum(-1)

    def probabilities(self, images: ImagesArg, prompt: str) -> torch.Tensor:
        """Preference probabilities over the images for one prompt (softmax of scores)."""
        return preference_probabilities(self.score(images, prompt))


# ----------------------------------------------------------------------------- images

class _Views(list):
    """Images already validated by ``image_views``."""


def _is_views(images: Any) -> bool:
    return isinstance(images, _Views)


def image_views(images: ImagesArg) -> list[torch.Tensor]:
    """Validated [1,H,W,3] views of each image, from an IMAGE batch or a list of images."""
    if isinstance(images, torch.Tensor):
        batch = as_rgb_batch(images, "images")
        return list(batch.split(1))
    if not isinstance(images, (list, tuple)) or not images:
        raise ScienceT2IError("no images given: connect an IMAGE (a batch of at least one).")
    views: list[torch.Tensor] = []
    for i, img in enumerate(images):
        views += list(as_rgb_batch(img, f"image {i}").split(1))
    return views


def count_images(images: ImagesArg) -> int:
    if isinstance(images, torch.Tensor):
        return 1 if images.dim() == 3 else int(images.shape[0])
    if not isinstance(images, (list, tuple)):
        raise ScienceT2IError(f"expected IMAGE tensors, got {type(images).__name__}")
    return sum(1 if t.dim() == 3 else int(t.shape[0]) for t in images)


# ----------------------------------------------------------------------------- loading

def load_sciscore(model: str | Path = DEFAULT_SCISCORE,
                  device: str | torch.device | None = None, dtype: str = "auto",
                  batch_size: int = 16, open_clip_arch: str | None = None,
                  compile: bool = False, onednn: bool | str = "auto",
                  preprocess: str = "exact") -> SciScoreModel:
    """Load SciScore from a name in models/sciscore, any path, or a hub id.

    A transformers CLIP folder or an open_clip .safetensors file (ViT-H-14 unless an
    ``open_clip_config.json`` beside it or ``open_clip_arch`` says otherwise). ``device``:
    None = ComfyUI's (or CUDA when available); ``dtype``: auto (fp16 on CUDA, fp32 on CPU),
    fp32, fp16 or bf16. ``compile``: run the image tower through ``torch.compile`` (fused
    kernels; the first batch of each new shape pays the compilation, and scoring falls back
    to eager if compilation fails). ``onednn``: with fp32 weights on CPU, "auto" runs both
    towers through oneDNN's fused kernels (same maths) where that is faster than PyTorch's
    own forward (AVX-512 and a one-time measurement, see ``SciScoreModel.cpu_path``), True
    always, False never.
    ``preprocess``: "exact" gives the model the pixels its own processor (transformers'
    CLIPImageProcessor, or open_clip's transform) computes from the 8-bit image, bit for bit;
    "fast" one float bicubic resize (pixels a few 1/255 steps off, see README).
    """
    path = resolve_source(model)
    dev = _comfy.torch_device() if device in (None, "", "auto") else torch.device(device)
    try:
        torch_dtype = _comfy.pick_dtype(dev, dtype)
    except ValueError as exc:
        raise ScienceT2IError(str(exc)) from exc
    name = os.fspath(model)
    if path.is_dir():
        clip, tokenizer, cfg = load_clip_directory(path, dtype=torch_dtype)
        log.info("SciScore %s loaded from %s (%s, %s)", name, path, dev, torch_dtype)
        return SciScoreModel.from_clip(clip, tokenizer, cfg, name=name, device=dev,
                                       batch_size=batch_size, compile=compile, onednn=onednn,
                                       preprocess=preprocess)
    parts = load_open_clip_file(path, dtype=torch_dtype, arch=open_clip_arch)
    log.info("SciScore %s loaded from %s (%s, %s)", name, path, dev, torch_dtype)
    return SciScoreModel(_OpenClipBackend(parts.model, parts.tokenizer), name=name,
                         image_size=parts.size, crop_size=parts.size, mean=parts.mean,
                         std=parts.std, device=dev, dtype=torch_dtype, batch_size=batch_size,
                         compile=compile, onednn=onednn, preprocess=preprocess,
                         convention="torchvision")


# ----------------------------------------------------------------------------- node classes
# Thin adapters: sockets -> the functions above. Scores leave the nodes as lists of FLOAT
# (OUTPUT_IS_LIST), one value per image, so downstream FLOAT inputs see every image's score;
# a STRING summary is shown in the node itself via the "ui" text.

CATEGORY = "Science-T2I/SciScore"


def sciscore_choices() -> list[str]:
    """The hub id, then local checkpoints: HF folders and loose .safetensors files (not the
    weight files inside those folders)."""
    names = _comfy.list_models("sciscore", (".safetensors",), include_dirs=True)
    dirs = [n for n in names if not n.endswith(".safetensors")]
    files = [n for n in names if n.endswith(".safetensors")
             and not any(n.startswith(d + "/") for d in dirs)]
    return [DEFAULT_SCISCORE] + [n for n in dirs + files if n != DEFAULT_SCISCORE]


def _as_model(model: Any) -> SciScoreModel:
    if not isinstance(model, SciScoreModel):
        raise ScienceT2IError("connect a SCISCORE_MODEL from the SciScore Loader node.")
    return model


def _summary_lines(scores: torch.Tensor, prompts: list[str]) -> list[str]:
    probs = preference_probabilities(scores) if len(set(prompts)) == 1 else None
    lines = []
    for rank, i in enumerate(rank_order(scores), 1):
        p = f"  p={probs[i]:.3f}" if probs is not None else ""
        lines.append(f"#{rank} image {i}: {scores[i]:.3f}{p}")
    return lines


class SciScoreLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (sciscore_choices(), {"tooltip": "A folder in models/sciscore, an open_clip "
                      ".safetensors, or the hub id (downloaded into models/sciscore on first use)."}),
            "dtype": (["auto", "fp16", "bf16", "fp32"], {"tooltip": "auto: fp16 on CUDA, fp32 on CPU"}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 256,
                                   "tooltip": "images encoded per forward pass"}),
        }, "optional": {
            "preprocess": (list(PREPROCESS_MODES), {"default": "exact", "tooltip":
                           "exact: the pixels SciScore's own processor computes (the paper's "
                           "numbers); fast: one float resize, scores ~1e-3 off"}),
        }}

    RETURN_TYPES = ("SCISCORE_MODEL",)
    RETURN_NAMES = ("sciscore_model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the SciScore reward model (a CLIP-H fine-tuned for scientific realism)."

    def load(self, model: str, dtype: str = "auto", batch_size: int = 16,
             preprocess: str = "exact"):
        return (load_sciscore(model, device=None, dtype=dtype, batch_size=batch_size,
                              preprocess=preprocess),)


class SciScoreNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sciscore_model": ("SCISCORE_MODEL",),
            "images": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "One prompt for all images, or one line per image."}),
        }}

    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("scores", "summary")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "score"
    CATEGORY = CATEGORY
    DESCRIPTION = ("SciScore of each image against its prompt: exp(logit_scale) * cosine of the "
                   "CLIP embeddings. Higher = more scientifically plausible.")

    def score(self, sciscore_model: Any, images: torch.Tensor, prompt: str):
        model = _as_model(sciscore_model)
        prompts = parse_prompts(prompt, count_images(images), split_lines=True)
        scores = model.score(images, prompts)
        summary = "\n".join(_summary_lines(scores, prompts) + model.truncation_lines(prompts))
        return {"ui": {"text": [summary]}, "result": (scores.tolist(), summary)}


class SciScoreRank:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sciscore_model": ("SCISCORE_MODEL",),
            "images": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
            "top_k": ("INT", {"default": 0, "min": 0, "max": 4096,
                              "tooltip": "keep the best k images; 0 keeps all"}),
        }}

    RETURN_TYPES = ("IMAGE", "FLOAT", "INT", "STRING")
    RETURN_NAMES = ("images", "scores", "indices", "summary")
    OUTPUT_IS_LIST = (False, True, True, False)
    FUNCTION = "rank"
    CATEGORY = CATEGORY
    DESCRIPTION = "Sorts an image batch by SciScore, best first, and keeps the top k."

    def rank(self, sciscore_model: Any, images: torch.Tensor, prompt: str, top_k: int = 0):
        model = _as_model(sciscore_model)
        prompts = parse_prompts(prompt, count_images(images), split_lines=True)
        scores = model.score(images, prompts)
        order = rank_order(scores)
        keep = order[:top_k] if top_k > 0 else order
        batch = images if images.dim() == 4 else images.unsqueeze(0)
        summary = "\n".join(_summary_lines(scores, prompts)[:len(keep)]
                             + model.truncation_lines(prompts))
        return {"ui": {"text": [summary]},
                "result": (batch[keep], scores[keep].tolist(), keep, summary)}


class SciScorePairwise:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sciscore_model": ("SCISCORE_MODEL",),
            "image_a": ("IMAGE",),
            "image_b": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
        }}

    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("probability_a", "score_a", "score_b", "summary")
    OUTPUT_IS_LIST = (True, True, True, False)
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Probability that image A is the more scientifically plausible of the pair "
                   "(softmax of the two SciScores, the paper's accuracy protocol). Batches are "
                   "compared pair by pair.")

    def compare(self, sciscore_model: Any, image_a: torch.Tensor, image_b: torch.Tensor,
                prompt: str):
        model = _as_model(sciscore_model)
        na, nb = count_images(image_a), count_images(image_b)
        if na != nb:
            raise ScienceT2IError(f"image_a has {na} images and image_b {nb}: pairs are compared "
                                  "index by index, so give both the same batch size.")
        prompts = parse_prompts(prompt, na, split_lines=True)
        scores = model.score([image_a, image_b], prompts + prompts)  # sizes may differ
        sa, sb = scores[:na], scores[na:]
        prob_a = preference_probabilities(torch.stack([sa, sb], dim=-1))[:, 0]
        lines = [f"pair {i}: A {sa[i]:.3f} vs B {sb[i]:.3f} -> P(A) = {prob_a[i]:.3f} "
                 f"({_verdict(float(sa[i]), float(sb[i]))})" for i in range(na)]
        summary = "\n".join(lines + model.truncation_lines(prompts))
        return {"ui": {"text": [summary]},
                "result": (prob_a.tolist(), sa.tolist(), sb.tolist(), summary)}


def _verdict(score_a: float, score_b: float) -> str:
    if score_a == score_b:
        return "a tie: equally plausible"
    return f"{'A' if score_a > score_b else 'B'} more plausible"


def _flatten_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for batch in images:
        out += list(as_rgb_batch(batch, "images"))
    return out


class ScoreOverlay:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from .score_overlay import POSITIONS
        return {"required": {
            "images": ("IMAGE",),
            "scores": ("FLOAT", {"forceInput": True}),
            "position": (list(POSITIONS),),
            "font_size": ("INT", {"default": 0, "min": 0, "max": 512,
                                  "tooltip": "0 = from the image size"}),
            "label": ("STRING", {"default": "SciScore", "tooltip": "text before the value"}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "overlay"
    CATEGORY = CATEGORY
    DESCRIPTION = "Writes each image's score onto it, so the preview shows it."

    def overlay(self, images: list, scores: list, position: list = ("top-left",),
                font_size: list = (0,), label: list = ("SciScore",)):
        from .score_overlay import overlay_scores
        flat = [float(s) for s in scores]
        n = sum(count_images(b) for b in images)
        if len(flat) != n:
            raise ScienceT2IError(f"{n} images but {len(flat)} scores: connect the scores output "
                                  "of the SciScore node that scored these images.")
        prefix = (label[0].strip() + " ") if label and label[0].strip() else ""
        out, k = [], 0
        for batch in images:
            rgb = as_rgb_batch(batch, "images")
            labels = [f"{prefix}{flat[k + i]:.2f}" for i in range(rgb.shape[0])]
            out.append(overlay_scores(rgb, labels, position[0], int(font_size[0])))
            k += rgb.shape[0]
        return (out,)


def _scoring_model_name(models: list | None, graph: Any) -> str:
    """The scorer's name: the connected model's, else the model input of the graph's only
    SciScore Loader (ComfyUI passes the API graph as the hidden PROMPT input), else ""."""
    if models and isinstance(models[0], SciScoreModel):
        return models[0].name
    if isinstance(graph, dict):
        names = {str(n.get("inputs", {}).get("model")) for n in graph.values()
                 if isinstance(n, dict) and n.get("class_type") == "ScienceT2I_SciScoreLoader"}
        if len(names) == 1:
            return names.pop()
    return ""


class SaveScoredImages:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "images": ("IMAGE",),
            "scores": ("FLOAT", {"forceInput": True}),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
            "filename_prefix": ("STRING", {"default": "sciscore/scored"}),
        }, "optional": {
            "sciscore_model": ("SCISCORE_MODEL", {"tooltip": "the model that scored the "
                               "images, named in the metadata (else the graph's only SciScore "
                               "Loader, if there is one)"}),
        }, "hidden": {"graph": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves PNGs into the output folder with the prompt and SciScore (score, rank) "
                   "in the PNG text metadata.")

    def save(self, images: list, scores: list, prompt: list = ("",),
             filename_prefix: list = ("sciscore/scored",), sciscore_model: list | None = None,
             graph: list | None = None, extra_pnginfo: list | None = None):
        from .save_scored import save_scored_pngs
        flat = _flatten_images(images)
        if not flat:
            raise ScienceT2IError("no images to save.")
        if len({tuple(t.shape) for t in flat}) == 1:
            batch = torch.stack(flat)
        else:
            batch = None
        prompts = parse_prompts(prompt[0] if len(prompt) == 1 else list(prompt), len(flat),
                                split_lines=True)
        extra: dict[str, Any] = {}
        if graph and graph[0] is not None:
            extra["prompt"] = graph[0]
        if extra_pnginfo and isinstance(extra_pnginfo[0], dict):
            extra.update(extra_pnginfo[0])
        out_dir = _comfy.output_directory()
        scores = [float(s) for s in scores]
        model_name = _scoring_model_name(sciscore_model, graph[0] if graph else None)
        if batch is not None:
            paths = save_scored_pngs(batch, prompts, scores, out_dir, filename_prefix[0],
                                     model_name=model_name, extra_text=extra)
        else:  # different sizes: one file at a time
            if len(scores) != len(flat):
                raise ScienceT2IError(f"{len(flat)} images but {len(scores)} scores.")
            paths = []
            for img, p, s in zip(flat, prompts, scores):
                paths += save_scored_pngs(img.unsqueeze(0), [p], [s], out_dir,
                                          filename_prefix[0], model_name=model_name,
                                          extra_text=extra)
        ui_images = [{"filename": p.name, "type": "output",
                      "subfolder": p.parent.relative_to(out_dir.resolve()).as_posix()
                      if p.parent != out_dir.resolve() else ""} for p in paths]
        text = "\n".join(f"{p.name}: {s:.3f}" for p, s in zip(paths, scores))
        return {"ui": {"images": ui_images, "text": [text]}}


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_SciScoreLoader": SciScoreLoader,
    "ScienceT2I_SciScore": SciScoreNode,
    "ScienceT2I_SciScoreRank": SciScoreRank,
    "ScienceT2I_SciScorePairwise": SciScorePairwise,
    "ScienceT2I_ScoreOverlay": ScoreOverlay,
    "ScienceT2I_SaveScoredImages": SaveScoredImages,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_SciScoreLoader": "SciScore Loader",
    "ScienceT2I_SciScore": "SciScore",
    "ScienceT2I_SciScoreRank": "SciScore Rank",
    "ScienceT2I_SciScorePairwise": "SciScore Pairwise",
    "ScienceT2I_ScoreOverlay": "SciScore Overlay",
    "ScienceT2I_SaveScoredImages": "Save Scored Images",
}
