"""On-disk cache of VAE latents and text embeddings, filled once before training.

Entries are keyed by a content hash: an image's key hashes its bytes, the VAE's identity, the
resolution and the preprocessing; a prompt's key hashes its text and the identity of both text
encoders, tokenizers and the T5 sequence length. A changed image, encoder or setting therefore
never reuses a stale entry, and an unchanged one is never recomputed. Entries are written in
safetensors shards (each written atomically), so an interrupted fill keeps what it finished.

Image entries hold the VAE posterior (``mean``, ``std``, [C, h, w]); prompt entries hold the T5
sequence (``t5``, [L, D]) and the CLIP pooled embedding (``pooled``, [P]).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from ...nodes.core import parts_digest, save_safetensors_atomic
from ...nodes.errors import ScienceT2IError

if TYPE_CHECKING:
    from ..core.datasets import ImageRef, ScienceRecord
    from .model import FluxEncoders
log = logging.getLogger(__name__)

# bump when image preprocessing changes, so old entries are not reused
PREPROCESS_VERSION = "shortest-side-bicubic-centre-crop-v1"


def image_bytes(ref: "ImageRef") -> bytes:
    if ref.data is not None:
        return ref.data
    if ref.path is not None and Path(ref.path).is_file():
        return Path(ref.path).read_bytes()
    ref.open()  # raises the reader's clear "image file not found" error
    raise ScienceT2IError(f"cannot read {ref.label or ref.path}")


def image_key(data: bytes, encoder_id: str, resolution: int, upscale_small: bool,
              resample: str = "bicubic", crop: bool = True, multiple: int = 1) -> str:
    # the pack's own preprocessing keeps its old keys, so existing caches stay valid
    how = PREPROCESS_VERSION if (resample, crop) == ("bicubic", True) else \
        f"shortest-side-{resample}-" + ("crop-v1" if crop else f"nocrop-multiple{multiple}-v1")
    return "img-" + parts_digest(hashlib.sha256(data).digest(), encoder_id, str(resolution),
                         how, "up" if upscale_small else "strict")


def prompt_key(prompt: str, encoder_id: str) -> str:
    return "txt-" + parts_digest(prompt, encoder_id)


def load_image_tensor(ref: "ImageRef", resolution: int, upscale_small: bool = False,
                      resample: str = "bicubic", crop: bool = True, multiple: int = 1
                      ) -> torch.Tensor:
    """Open an image as RGB, resize its shortest side to ``resolution``, return [3, H, W] in
    [-1, 1].

    - ``crop`` (pack): bicubic (antialiased, or ``resample``), long side rounded, then a
      centre crop to a square R x R;
    - no crop (reference implementation): torchvision's ``Resize(R, bilinear)``, ``ToTensor``
      and ``Normalize(0.5, 0.5)`` exactly (long side truncated, as torchvision computes it), so
      non-square images keep their aspect ratio. A side that is not a multiple of
      ``multiple`` (the latent packing's granularity, 16 px for FLUX) is centre-cropped down
      to one, where the reference implementation would fail.

    Images smaller than the resolution are refused unless ``upscale_small``: upscaling trains the
    model on blurry pictures, so it has to be asked for.
    """
    import numpy as np
    from PIL import Image
    img = ref.open()  # RGB whatever the file's mode (L, P, RGBA, CMYK ...)
    w, h = img.size
    if min(w, h) < resolution and not upscale_small:
        raise ScienceT2IError(
            f"{ref.label or ref.path or 'an image'} is {w}x{h}, smaller than the training "
            f"resolution {resolution}; lower data.resolution, drop the image, or set "
            "data.upscale_small=true to upscale it (blurrier training data).")
    filt = Image.BILINEAR if resample == "bilinear" else Image.BICUBIC
    if not crop:
        from ...nodes.sciscore import resized_shape
        nh, nw = resized_shape(h, w, resolution)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), filt)
        arr = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        th, tw = nh - nh % multiple, nw - nw % multiple
        top, left = (nh - th) // 2, (nw - tw) // 2
        arr = arr[:, top:top + th, left:left + tw]
        return arr.float().div(255).sub(0.5).div(0.5).contiguous()
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), filt, reducing_gap=None)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    return (arr.permute(2, 0, 1) / 127.5 - 1.0).contiguous()


class LatentCache:
    """A folder of safetensors shards; each tensor is named ``<entry key>.<field>``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._index: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self.refresh()

    def refresh(self) -> None:
        from safetensors import safe_open
        self._index.clear()
        self._handles.clear()
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys = list(f.keys())
            except Exception as exc:  # a shard damaged outside our atomic writes
                log.warning("ignoring unreadable cache shard %s (%s)", shard, exc)
                continue
            for k in keys:
                self._index[k.rsplit(".", 1)[0]] = shard

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _handle(self, key: str) -> Any:
        from safetensors import safe_open
        shard = self._index.get(key)
        if shard is None:
            raise ScienceT2IError(f"latent cache {self.folder} has no entry {key}; rebuild it "
                                  "(delete the folder or run again to fill it).")
        handle = self._handles.get(shard)
        if handle is None:  # kept open: safetensors maps the file, reads are cheap
            handle = safe_open(str(shard), framework="pt")
            self._handles[shard] = handle
        return handle

    def get(self, key: str, fields: Iterable[str]) -> dict[str, torch.Tensor]:
        handle = self._handle(key)
        return {f: handle.get_tensor(f"{key}.{f}") for f in fields}

    def shape(self, key: str, field: str) -> list[int]:
        """A cached tensor's shape, from the file header (no data read)."""
        return list(self._handle(key).get_slice(f"{key}.{field}").get_shape())

    def put_many(self, entries: dict[str, dict[str, torch.Tensor]]) -> Path | None:
        if not entries:
            return None
        tensors = {f"{key}.{name}": t for key, fields in entries.items()
                   for name, t in fields.items()}
        shard = self.folder / f"shard-{parts_digest(*sorted(entries))[:20]}.safetensors"
        save_safetensors_atomic(tensors, shard)
        for key in entries:
            self._index[key] = shard
        return shard


@dataclass
class CachedRecord:
    """A training record reduced to cache keys: its implicit prompts and explicit images."""
    index: int
    prompt_keys: list[str]
    image_keys: list[str]


def _batched(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def build_cache(records: list["ScienceRecord"], encoders: "FluxEncoders", cache: LatentCache,
                *, resolution: int, upscale_small: bool = False, resample: str = "bicubic",
                crop: bool = True, multiple: int = 1, batch_size: int = 8,
                cache_dtype: torch.dtype = torch.float32, extra_prompts: Iterable[str] = (),
                shard_size: int = 256, progress: bool = True) -> tuple[list[CachedRecord],
                                                                        dict[str, str]]:
    """Encode whatever is not cached yet; return the records as keys and the extra prompts'
    keys. Encoders are loaded only if something is missing (a second run loads none)."""
    from ...nodes._comfy import Progress

    text_id, image_id = encoders.text_encoder_id(), encoders.image_encoder_id()
    prompts: dict[str, str] = {}
    images: dict[str, "ImageRef"] = {}
    out: list[CachedRecord] = []
    for rec in records:
        if not rec.implicit_prompts:
            raise ScienceT2IError(f"record {rec.index} has no implicit prompt; SFT pairs an "
                                  "implicit prompt with an explicit image: fix or drop it.")
        if not rec.explicit_images:
            raise ScienceT2IError(f"record {rec.index} has no explicit image; fix or drop it.")
        pk = []
        for p in rec.implicit_prompts:
            k = prompt_key(p, text_id)
            prompts.setdefault(k, p)
            pk.append(k)
        ik = []
        for ref in rec.explicit_images:
            k = image_key(image_bytes(ref), image_id, resolution, upscale_small, resample,
                          crop, multiple)
            images.setdefault(k, ref)
            ik.append(k)
        out.append(CachedRecord(rec.index, pk, ik))
    extra = {}
    for p in extra_prompts:
        k = prompt_key(p, text_id)
        prompts.setdefault(k, p)
        extra[p] = k

    todo_p = [k for k in prompts if k not in cache]
    todo_i = [k for k in images if k not in cache]
    if todo_i:  # check every image before spending time on encoding
        for k in todo_i:
            load_image_tensor(images[k], resolution, upscale_small, resample, crop, multiple)
    if todo_p or todo_i:
        log.info("latent cache %s: encoding %d prompts and %d images (%d entries cached)",
                 cache.folder, len(todo_p), len(todo_i), len(cache))
    with Progress(len(todo_p) + len(todo_i), desc="caching",
                  enabled=progress and bool(todo_p or todo_i)) as bar:
        for shard_keys in _batched(todo_p, shard_size):
            entries = {}
            for keys in _batched(shard_keys, batch_size):
                seq, pooled = encoders.encode_prompts([prompts[k] for k in keys])
                for j, k in enumerate(keys):
                    entries[k] = {"t5": seq[j].to(cache_dtype), "pooled": pooled[j].to(cache_dtype)}
                bar.update(len(keys))
            cache.put_many(entries)
        for shard_keys in _batched(todo_i, shard_size):
            entries = {}
            for keys in _batched(shard_keys, batch_size):
                loaded = {k: load_image_tensor(images[k], resolution, upscale_small, resample,
                                               crop, multiple) for k in keys}
                # without a crop, sizes can differ: encode each size as its own batch
                for size in dict.fromkeys(t.shape for t in loaded.values()):
                    group = [k for k in keys if loaded[k].shape == size]
                    mean, std = encoders.encode_images(torch.stack([loaded[k] for k in group]))
                    for j, k in enumerate(group):
                        entries[k] = {"mean": mean[j].to(cache_dtype),
                                      "std": std[j].to(cache_dtype)}
                bar.update(len(keys))
            cache.put_many(entries)
    return out, extra


class CachedPrompts:
    """The text conditioning of a fixed set of prompts, read from a ``LatentCache``: what
    ``FluxEncoders.encode_prompts`` gives, without the text encoders in memory. Built by
    ``cache_prompts``."""

    def __init__(self, cache: LatentCache, keys: dict[str, str]):
        self.cache, self.keys = cache, keys

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = sorted({p for p in prompts if p not in self.keys})
        if missing:
            raise ScienceT2IError(f"{len(missing)} prompt(s) were not encoded beforehand, e.g. "
                                  f"{missing[0]!r}: only the prompts given to cache_prompts "
                                  "can be read.")
        rows = [self.cache.get(self.keys[p], ("t5", "pooled")) for p in prompts]
        return torch.stack([r["t5"] for r in rows]), torch.stack([r["pooled"] for r in rows])


def cache_prompts(prompts: Iterable[str], encoders: "FluxEncoders", cache: LatentCache, *,
                  dtype: torch.dtype, batch_size: int = 8, progress: bool = True,
                  first: Any = None) -> CachedPrompts:
    """Encode the prompts not cached yet (T5 and CLIP, as ``encode_prompts``), then release
    the text encoders. ``first``: accelerate's ``main_process_first`` (one process fills the
    cache, the others read it)."""
    with first() if first is not None else contextlib.nullcontext():
        cache.refresh()
        _, keys = build_cache([], encoders, cache, resolution=0, batch_size=batch_size,
                              cache_dtype=dtype, extra_prompts=list(dict.fromkeys(prompts)),
                              progress=progress)
    encoders.release_text()
    return CachedPrompts(cache, keys)
