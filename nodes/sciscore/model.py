"""The SciScore scorer: encode images and prompts, score, rank.

score(prompt, image) = exp(logit_scale) * cos(text_emb(prompt), image_emb(image)), exactly as
the paper and its reference code define it; preference probabilities are the softmax of the
scores over the candidate images of one prompt. The checkpoint is a transformers CLIPModel
(``Jialuo21/SciScore``) or an open_clip ViT-H-14 safetensors file.

Images are ComfyUI IMAGE tensors, preprocessed as tensors (``preprocess``), encoded in
batches with progress and a cancel check per batch; text embeddings are cached per model and
prompt. Inside ComfyUI the model is a ModelPatcher that comfy.model_management loads and
offloads, like ComfyUI's own clip_vision.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .. import _comfy
from ..core.images import as_rgb_batch
from ..errors import ScienceT2IError
from . import onednn as onednn_kernels
from .preprocess import MODES as PREPROCESS_MODES
from .preprocess import preprocess_images

log = logging.getLogger("science_t2i")


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
        out = onednn_kernels.hf_image_features(self.module, pixels) if onednn else None
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
        out = onednn_kernels.hf_text_features(self.module, ids, mask) if onednn else None
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
        out = onednn_kernels.open_clip_image_features(self.module, pixels) if onednn else None
        return out if out is not None else self.module.encode_image(pixels)

    def text_features(self, prompts: list[str], device: torch.device,
                      onednn: bool = False) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(device)
        out = onednn_kernels.open_clip_text_features(self.module, tokens) if onednn else None
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
        # fp32 on CPU: both towers through oneDNN's fused kernels (``onednn``) when forced
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

    @classmethod
    def from_open_clip(cls, parts: Any, *, name: str, device: torch.device,
                       dtype: torch.dtype, batch_size: int = 16, compile: bool = False,
                       onednn: bool | str = "auto", preprocess: str = "exact") -> "SciScoreModel":
        """A scorer around an open_clip model (the ``OpenClipParts`` of
        ``load_open_clip_file``), preprocessed with open_clip's torchvision transform."""
        return cls(_OpenClipBackend(parts.model, parts.tokenizer), name=name,
                   image_size=parts.size, crop_size=parts.size, mean=parts.mean, std=parts.std,
                   device=device, dtype=dtype, batch_size=batch_size, compile=compile,
                   onednn=onednn, preprocess=preprocess, convention="torchvision")

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

    def cpu_path(self) -> onednn_kernels.Choice:
        """The forward scoring runs, ("onednn" | "pytorch", why). With onednn="auto" on fp32
        CPU weights, the first call (at the first scoring) decides by the CPU's capability
        and a measurement of one layer, once per process and thread count."""
        Choice = onednn_kernels.Choice
        if self.onednn is True:
            return Choice("onednn", "onednn=True (forced; fp32 weights on CPU only)")
        if self.onednn is False:
            return Choice("pytorch", self._onednn_off)
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return Choice("pytorch", f"{self.device.type} {self.dtype}: the oneDNN path runs "
                                     "only fp32 weights on CPU")
        return onednn_kernels.auto_choice(self.module)

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
