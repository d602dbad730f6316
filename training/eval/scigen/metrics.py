"""SciGenBench's "standard metrics" against real images (its SeePhys subset): PSNR, SSIM,
CLIP score and FID, computed as SciGenBench's ``src/eval/t2i_metric.py`` computes them,
through torchmetrics.

Per record (a generated image, the real image, the prompt):
- PSNR and SSIM: both images RGB uint8, the real one resized to the generated one's size
  with PIL bicubic when the sizes differ; data range 255. SSIM is the reference's
  scikit-image ``structural_similarity(win_size=3, channel_axis=2)``, reproduced exactly with
  torchmetrics (see ``pixel_metrics``).
- CLIP score: torchmetrics CLIPScore, max(100 * cos(image, text), 0), of the generated image
  resized to 224x224 (torchvision ``Resize``) and the prompt cut to 77 CLIP tokens.
- FID: torchmetrics FrechetInceptionDistance(feature=2048) over all pairs, real = the real
  images, fake = the generated ones, each resized to 299x299 uint8.
The summary is the mean of the per-record values and the FID of all pairs.

One deliberate difference: the reference handed CLIPScore images as floats in 0..1, which
the CLIP processor rescales by 1/255 once more (a near-black image for every record);
torchmetrics expects 0..255, which is what it gets here.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ....nodes import _comfy
from ....nodes.core import hub, load_torch_checkpoint
from ....nodes.errors import ScienceT2IError
from ...core.preflight import require_modules
from ..reports import mean_or_none

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch16"
CLIP_IMAGE_SIZE = 224
CLIP_MAX_TOKENS = 77
FID_IMAGE_SIZE = 299
SSIM_WINDOW = 3
# What a CLIP folder needs from a hub repo. openai's CLIP repos may hold only
# pytorch_model.bin, which transformers loads with torch.load(weights_only=True).
CLIP_PATTERNS = ["*.json", "*.txt", "*.safetensors", "pytorch_model.bin"]
METRICS_PACKAGES = ' or pip install "torchmetrics>=1.9" "torch-fidelity>=0.4"'


@dataclass
class PairMetrics:
    psnr: float
    ssim: float


def _rgb(image: Any, what: str) -> Image.Image:
    """The reference opens every image with ``.convert("RGB")`` (an alpha channel is dropped,
    not composited)."""
    if not isinstance(image, Image.Image):
        raise ScienceT2IError(f"the {what} image must be a PIL image, got "
                              f"{type(image).__name__}; open files with PIL.Image.open.")
    return image if image.mode == "RGB" else image.convert("RGB")


def _float_batch(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> float64 [1, 3, H, W] in 0..255 (scikit-image's precision)."""
    from torchvision.transforms.functional import pil_to_tensor
    return pil_to_tensor(image).unsqueeze(0).to(torch.float64)


def _resized_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """The reference's ``Resize((size, size))`` + ``ToTensor`` + ``*255, round, uint8``:
    uint8 [3, size, size] (PILToTensor gives the same bytes without the round trip)."""
    from torchvision import transforms
    return transforms.PILToTensor()(transforms.Resize((size, size))(image))


def pixel_metrics(generated: Image.Image, real: Image.Image) -> PairMetrics:
    """PSNR and SSIM of ``generated`` against ``real``, as the reference computes them.

    torchmetrics' SSIM with a uniform 3x3 window differs from scikit-image's in two ways,
    both undone here: scikit-image uses sample (co)variances, N/(N-1) = 9/8 times the
    population ones torchmetrics uses, which equals scaling C2 by 8/9, i.e. k2 by sqrt(8/9);
    and it averages only windows inside the image (a (win-1)/2 = 1 pixel border cropped),
    where torchmetrics also averages the reflect-padded border. The result equals
    scikit-image's to about 1e-12.
    """
    require_modules(["torchmetrics"], "the SciGenBench metrics", METRICS_PACKAGES)
    from torchmetrics.functional.image import (peak_signal_noise_ratio,
                                               structural_similarity_index_measure)
    gen = _rgb(generated, "generated")
    ref = _rgb(real, "real")
    if ref.size != gen.size:
        ref = ref.resize(gen.size, Image.BICUBIC)
    if min(gen.size) < SSIM_WINDOW:
        raise ScienceT2IError(f"the generated image is {gen.size[0]}x{gen.size[1]} pixels; SSIM "
                              f"needs at least {SSIM_WINDOW}x{SSIM_WINDOW}.")
    g, r = _float_batch(gen), _float_batch(ref)
    psnr = peak_signal_noise_ratio(g, r, data_range=255.0)
    n = SSIM_WINDOW * SSIM_WINDOW
    _, ssim_map = structural_similarity_index_measure(
        g, r, gaussian_kernel=False, kernel_size=SSIM_WINDOW, data_range=255.0,
        k2=0.03 * math.sqrt((n - 1) / n), return_full_image=True)
    pad = (SSIM_WINDOW - 1) // 2
    ssim = ssim_map[..., pad:-pad, pad:-pad].mean()
    return PairMetrics(psnr=float(psnr), ssim=float(ssim))


# ----------------------------------------------------------------------------- CLIP

def clip_folder(name: str) -> Path:
    """A CLIP folder path, or a hub id -> a local folder. A hub id is looked for in
    models/sciscore/<repo name> (where the pack keeps CLIP folders) and downloaded there on
    first use; offline it stops with the ``hf download`` command."""
    path = hub.local_model("sciscore", name)
    if path is not None and path.is_dir():
        return path
    if hub.looks_like_hub_id(name):
        return hub.download_model("sciscore", name, CLIP_PATTERNS, "CLIP model",
                                  required="config.json")
    command = hub.download_command(DEFAULT_CLIP, Path(name).expanduser(), CLIP_PATTERNS)
    raise ScienceT2IError(f"CLIP model {name!r} not found: it is neither a folder nor a hub id. "
                          f"Fetch the default CLIP with `{command}` and pass that folder.")


class _ProjectedCLIP(torch.nn.Module):
    """CLIPModel as torchmetrics 1.9's CLIPScore calls it: it normalises what
    ``get_*_features`` return, which in transformers 5 is an output object (the projected
    embedding is its ``pooler_output``)."""

    def __init__(self, clip: Any):
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return getattr(out, "pooler_output", out)

    def get_text_features(self, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(out, "pooler_output", out)


class _TruncatingProcessor:
    """CLIPProcessor that cuts text to 77 tokens keeping the end-of-text token. torchmetrics
    slices longer ids instead, dropping the token CLIP pools; re-encoding the reference's
    decoded 77-token text can come out a token or two longer."""

    def __init__(self, processor: Any, max_length: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length

    def __call__(self, *args: Any, text: Any = None, **kwargs: Any) -> Any:
        if text is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(*args, text=text, **kwargs)


def load_clip_for_score(name: str) -> tuple[torch.nn.Module, Any]:
    """(model, processor) for torchmetrics' CLIPScore from a CLIP folder or hub id."""
    folder = clip_folder(name)
    how = f"`{hub.download_command(DEFAULT_CLIP, folder, CLIP_PATTERNS)}`"
    if not (folder / "config.json").is_file():
        raise ScienceT2IError(f"{folder} has no config.json, so it is not a transformers CLIP "
                              f"folder; fetch one with {how}.")
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").is_file():
        raise ScienceT2IError(f"{folder} has no weights (*.safetensors or pytorch_model.bin): "
                              f"the download is incomplete. Fetch it with {how}.")
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    try:
        config = CLIPConfig.from_pretrained(str(folder))
        # safetensors first; a .bin only through torch.load(weights_only=True)
        model = CLIPModel.from_pretrained(str(folder), config=config).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(str(folder))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ScienceT2IError(f"could not load the CLIP model in {folder} ({type(exc).__name__}: "
                              f"{reason}); it needs a CLIP config.json, weights, tokenizer and "
                              f"preprocessor files, as {how} fetches them.") from exc
    return _ProjectedCLIP(model), _TruncatingProcessor(processor, CLIP_MAX_TOKENS)


def truncate_prompt(tokenizer: Any, prompt: Any) -> str:
    """The reference's 77-token cut: encode with truncation, decode without special tokens."""
    text = "" if prompt is None else str(prompt)
    ids = tokenizer(text, truncation=True, max_length=CLIP_MAX_TOKENS)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- FID

def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return URL_INCEPTION_V3


def inception_cache_path() -> Path:
    """Where torch-fidelity (torch.hub) keeps the InceptionV3 weights it downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(inception_url())


def _inception_how(cache: Path) -> str:
    url = inception_url()
    return (f"Download them where there is internet access with:\n  curl -L --create-dirs -o "
            f"{hub._quote(str(cache))} {url}\nthen put the file at {cache} (where torch-fidelity "
            "looks) or pass its path as fid_weights; or turn FID off (fid=False).")


def _inception_fid(fid_weights: str | os.PathLike | None) -> Any:
    """torchmetrics' FrechetInceptionDistance(feature=2048) with torch-fidelity's InceptionV3
    weights from ``fid_weights``, torch.hub's cache, or (online) downloaded into that cache."""
    require_modules(["torch_fidelity"], "FID", METRICS_PACKAGES)
    from torchmetrics.image.fid import FrechetInceptionDistance
    cache = inception_cache_path()
    path = Path(fid_weights).expanduser() if fid_weights else cache
    if fid_weights and not path.is_file():
        raise ScienceT2IError(f"FID weights file not found: {path}. {_inception_how(cache)}")
    if not path.is_file():
        url = inception_url()
        if hub.hub_offline():
            raise ScienceT2IError(
                f"FID needs torch-fidelity's InceptionV3 weights ({url}); they are not in "
                f"{cache} and offline mode (HF_HUB_OFFLINE) is on, so they cannot be "
                f"downloaded. {_inception_how(cache)}")
        log.info("downloading the FID InceptionV3 weights into %s", cache)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # a temporary file renamed into place, so the cache never holds half a file
            torch.hub.download_url_to_file(url, str(cache), progress=_comfy.progress_enabled())
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ScienceT2IError(f"could not download the FID InceptionV3 weights {url} "
                                  f"({type(exc).__name__}: {reason}). "
                                  f"{_inception_how(cache)}") from exc
    # torch-fidelity loads the file with weights_only=False: refuse anything but tensors first
    load_torch_checkpoint(path)
    try:
        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ScienceT2IError(f"{path} is not torch-fidelity's InceptionV3 weights "
                              f"({type(exc).__name__}: {reason}). {_inception_how(cache)}") from exc


# ----------------------------------------------------------------------------- accumulator

def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ScienceT2IError(f"unknown device {device!r}; use 'cpu' or 'cuda'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScienceT2IError(f"device {device!r} was asked for but CUDA is not available; "
                              "use device='cpu'.")
    return dev


class StandardMetrics:
    """Accumulates SciGenBench's standard metrics over records, on CPU or CUDA.

    ``clip_model``: a CLIP folder or hub id (None: no CLIP score). ``fid_weights``: a local
    copy of torch-fidelity's InceptionV3 weights. ``fid_feature_extractor``: a module used
    instead of InceptionV3 (it gets uint8 [B, 3, 299, 299] and returns [B, F] features, and
    should have a ``num_features`` attribute), for tests or custom features.
    """

    def __init__(self, *, clip_model: str | None = DEFAULT_CLIP,
                 fid_weights: str | None = None, fid: bool = True, device: str = "cpu",
                 fid_feature_extractor: torch.nn.Module | None = None):
        require_modules(["torchmetrics"], "the SciGenBench metrics", METRICS_PACKAGES)
        self.device = _device(device)
        self._clip: Any = None
        self._tokenizer: Any = None
        if clip_model is not None:
            from torchmetrics.multimodal import CLIPScore
            model, processor = load_clip_for_score(str(clip_model))
            self._clip = CLIPScore(model_name_or_path=lambda: (model, processor)).to(self.device)
            self._tokenizer = processor.tokenizer
        self._fid: Any = None
        if fid:
            if fid_feature_extractor is not None:
                from torchmetrics.image.fid import FrechetInceptionDistance
                self._fid = FrechetInceptionDistance(feature=fid_feature_extractor)
            else:
                self._fid = _inception_fid(fid_weights)
            self._fid = self._fid.to(self.device)
        self.records: dict[str, dict] = {}
        self.pairs = 0

    def clip_score(self, generated: Image.Image, prompt: Any) -> float:
        """max(100 * cos, 0) of the image (224x224, uint8) and the prompt's first 77 tokens."""
        if self._clip is None:
            raise ScienceT2IError("no CLIP model was loaded (clip_model=None); pass a CLIP "
                                  f"folder or hub id such as {DEFAULT_CLIP}.")
        generated = _rgb(generated, "generated")
        text = truncate_prompt(self._tokenizer, prompt)
        image = _resized_uint8(generated, CLIP_IMAGE_SIZE).to(self.device)
        self._clip.reset()  # one record's value, not the running mean
        self._clip.update(image.unsqueeze(0), [text])
        return float(self._clip.compute())

    @torch.no_grad()
    def add(self, record_id: str, generated: Image.Image, real: Image.Image | None,
            prompt: str) -> dict:
        """Score one record; returns {"psnr", "ssim", "clip"} (psnr / ssim only with a real
        image, clip None without a CLIP model). A real image also enters FID."""
        rid = str(record_id)
        if rid in self.records:
            raise ScienceT2IError(f"record {rid!r} was added twice; each record counts once "
                                  "(FID pools every pair): give each record its own id.")
        gen = _rgb(generated, "generated")
        ref = None if real is None else _rgb(real, "real")
        out: dict[str, Any] = {}
        if ref is not None:
            pair = pixel_metrics(gen, ref)
            out.update(psnr=pair.psnr, ssim=pair.ssim)
        out["clip"] = None if self._clip is None else self.clip_score(gen, prompt)
        if ref is not None:
            if self._fid is not None:
                real_px = _resized_uint8(ref, FID_IMAGE_SIZE).unsqueeze(0).to(self.device)
                fake_px = _resized_uint8(gen, FID_IMAGE_SIZE).unsqueeze(0).to(self.device)
                self._fid.update(real_px, real=True)
                self._fid.update(fake_px, real=False)
            self.pairs += 1
        self.records[rid] = out
        return dict(out)

    def summary(self) -> dict:
        """Means of the per-record values and the FID of all pairs: {"psnr", "ssim", "clip",
        "fid", "pairs", "records"}, with "fid_error" saying why "fid" is None."""
        rows = list(self.records.values())
        result: dict[str, Any] = {
            "psnr": mean_or_none([r["psnr"] for r in rows if "psnr" in r]),
            "ssim": mean_or_none([r["ssim"] for r in rows if "ssim" in r]),
            "clip": mean_or_none([r["clip"] for r in rows if r.get("clip") is not None]),
            "fid": None, "pairs": self.pairs, "records": len(rows)}
        if self._fid is None:
            result["fid_error"] = "FID is off (fid=False)"
        elif self.pairs < 2:
            result["fid_error"] = (f"FID needs at least 2 pairs of generated and real images; "
                                   f"{self.pairs} arrived")
        else:
            try:
                result["fid"] = float(self._fid.compute())
            except (RuntimeError, ValueError) as exc:  # e.g. linear algebra on degenerate features
                result["fid_error"] = f"FID could not be computed ({type(exc).__name__}: {exc})"
        return result
