"""Training samples for SciScore from Science-T2I-format records.

Each sample draws its implicit, explicit and superficial prompt and its explicit and
superficial image independently at random from the record's lists, as the reference trainer
does, so every combination a record offers is seen over an epoch.

The stream of samples is a pure function of (seed, sample number): sample ``k`` comes from
record ``order(epoch)[k % N]`` with its own ``random.Random`` seeded from ``(seed, k)``. A
resumed run therefore needs only the step it stopped at to continue with exactly the samples
an uninterrupted run would have drawn, whatever the number of loader threads or devices.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...nodes.errors import ScienceT2IError
from ..core.datasets import ImageRef, ScienceRecord

# load_records() must see all five lists non-empty for a record to be trainable.
TRAIN_FIELDS = ("implicit_prompt", "explicit_prompt", "superficial_prompt",
                "explicit_image", "superficial_image")
_LISTS = (("implicit_prompt", "implicit_prompts"), ("explicit_prompt", "explicit_prompts"),
          ("superficial_prompt", "superficial_prompts"), ("explicit_image", "explicit_images"),
          ("superficial_image", "superficial_images"))


def check_records(records: Sequence[ScienceRecord], what: str, *,
                  need_all: bool = True) -> None:
    """Refuse an empty split, and records with an empty prompt or image list.

    ``need_all`` (training) checks the five lists; otherwise (evaluation) the implicit prompt
    and the first explicit and superficial image, which is what the accuracy protocol uses.
    """
    if not records:
        raise ScienceT2IError(
            f"the {what} split is empty: it has no records. Point it at a split that holds "
            "Science-T2I records (or, for the held-out split, raise data.eval_fraction or set "
            "data.eval_path).")
    names = _LISTS if need_all else (_LISTS[0], _LISTS[3], _LISTS[4])
    for rec in records:
        for field, attr in names:
            if not getattr(rec, attr):
                raise ScienceT2IError(
                    f"{what} record {rec.index} has an empty {field!r} list; every record needs "
                    f"at least one entry in each of {', '.join(f for f, _ in names)}. Fix the "
                    "record or drop it from the dataset.")


@dataclass(frozen=True)
class DrawnSample:
    implicit_prompt: str
    explicit_prompt: str
    superficial_prompt: str
    explicit_image: ImageRef
    superficial_image: ImageRef
    record_index: int


def draw_sample(record: ScienceRecord, rng: random.Random) -> DrawnSample:
    """Five independent uniform draws, one from each of the record's lists."""
    return DrawnSample(
        implicit_prompt=rng.choice(record.implicit_prompts),
        explicit_prompt=rng.choice(record.explicit_prompts),
        superficial_prompt=rng.choice(record.superficial_prompts),
        explicit_image=rng.choice(record.explicit_images),
        superficial_image=rng.choice(record.superficial_images),
        record_index=record.index,
    )


@dataclass(frozen=True)
class ImageSpec:
    """The SciScore image preprocessing of one model (from its preprocessor_config.json)."""
    size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"
    mode: str = "exact"             # nodes/sciscore/preprocess: exact (the processor's pixels) or fast

    @classmethod
    def from_image_config(cls, cfg: dict[str, Any], mode: str = "exact") -> "ImageSpec":
        """From the image config ``load_clip_directory`` returns (the scorer reads the same)."""
        return cls(size=int(cfg["size"]), crop_size=int(cfg.get("crop_size") or cfg["size"]),
                   mean=tuple(float(v) for v in cfg["image_mean"]),
                   std=tuple(float(v) for v in cfg["image_std"]),
                   rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
                   resample=str(cfg.get("resample", "bicubic")), mode=mode)


def image_tensor(ref: ImageRef) -> torch.Tensor:
    """[H, W, 3] float32 in 0..1, the ComfyUI IMAGE layout the SciScore preprocessing takes."""
    import numpy as np
    arr = np.asarray(ref.open(), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).float().div_(255.0)


def augment_image(img: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A light augmentation (off by default): a random crop keeping 80-100% of each side,
    then a horizontal flip half the time. Never changes colours, which carry the science."""
    h, w = img.shape[:2]
    ch, cw = max(1, round(h * rng.uniform(0.8, 1.0))), max(1, round(w * rng.uniform(0.8, 1.0)))
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    img = img[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        img = img.flip(1)
    return img


def preprocess(img: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """One [H,W,3] image -> [3, crop, crop] normalised pixels (the scorer's own preprocessing)."""
    from ...nodes.sciscore import preprocess_images
    return preprocess_images(img.unsqueeze(0), spec.size, spec.mean, spec.std,
                             crop_size=spec.crop_size, mode=spec.mode,
                             rescale_factor=spec.rescale_factor, resample=spec.resample)[0]


@dataclass
class SciScoreBatch:
    """One micro-batch: the three prompt kinds tokenised together, then the two image sets."""
    input_ids: torch.Tensor        # [3B, L]: implicit rows, then explicit, then superficial
    attention_mask: torch.Tensor   # [3B, L]
    pixel_values: torch.Tensor     # [2B, 3, S, S]: explicit images, then superficial
    record_indices: list[int]

    @property
    def size(self) -> int:
        return len(self.record_indices)

    def to(self, device: torch.device | str) -> "SciScoreBatch":
        return SciScoreBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.pixel_values.to(device), self.record_indices)


def tokenize(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP tokenisation as the scorer does it (truncated to the 77-token context)."""
    max_len = min(int(getattr(tokenizer, "model_max_length", 77) or 77), 77)
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_len,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


class SampleStream:
    """The endless, reproducible stream of training samples over ``records``."""

    def __init__(self, records: Sequence[ScienceRecord], tokenizer: Any, spec: ImageSpec,
                 seed: int = 0, augment: bool = False, num_workers: int = 2):
        check_records(records, "training")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.spec = spec
        self.seed = int(seed)
        self.augment = augment
        self._orders: dict[int, list[int]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, num_workers),
                                        thread_name_prefix="sciscore-data")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.records)))
            random.Random(f"sciscore-order-{self.seed}-{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all a run needs
        return self._orders[epoch]

    def sample_rng(self, k: int) -> random.Random:
        return random.Random(f"sciscore-sample-{self.seed}-{k}")

    def draw(self, k: int) -> tuple[DrawnSample, random.Random]:
        n = len(self.records)
        record = self.records[self._order(k // n)[k % n]]
        rng = self.sample_rng(k)
        return draw_sample(record, rng), rng

    def _pixels(self, ref: ImageRef, rng: random.Random | None) -> torch.Tensor:
        img = image_tensor(ref)
        if rng is not None:
            img = augment_image(img, rng)
        return preprocess(img, self.spec)

    def batch(self, sample_numbers: Sequence[int]) -> SciScoreBatch:
        """Load, preprocess and tokenise the samples with the given stream numbers."""
        drawn = [self.draw(k) for k in sample_numbers]
        jobs = []
        for s, rng in drawn:
            # each image gets its own generator so the result does not depend on thread timing
            r_exp = random.Random(rng.random()) if self.augment else None
            r_sup = random.Random(rng.random()) if self.augment else None
            jobs.append(self._pool.submit(self._pixels, s.explicit_image, r_exp))
            jobs.append(self._pool.submit(self._pixels, s.superficial_image, r_sup))
        pixels = [j.result() for j in jobs]
        samples = [s for s, _ in drawn]
        prompts = ([s.implicit_prompt for s in samples] + [s.explicit_prompt for s in samples]
                   + [s.superficial_prompt for s in samples])
        ids, mask = tokenize(self.tokenizer, prompts)
        return SciScoreBatch(input_ids=ids, attention_mask=mask,
                             pixel_values=torch.stack(pixels[0::2] + pixels[1::2]),
                             record_indices=[s.record_index for s in samples])


def split_held_out(records: list[ScienceRecord], fraction: float,
                   seed: int) -> tuple[list[ScienceRecord], list[ScienceRecord]]:
    """Hold out ``fraction`` of the records (seeded shuffle) -> (train, held_out)."""
    if not 0.0 < fraction < 1.0:
        raise ScienceT2IError(f"data.eval_fraction must be between 0 and 1 (exclusive); got "
                              f"{fraction}. Or set data.eval_path to a separate held-out split.")
    order = list(range(len(records)))
    random.Random(f"sciscore-holdout-{seed}").shuffle(order)
    n_eval = int(round(len(records) * fraction))
    if n_eval == 0:
        raise ScienceT2IError(
            f"the held-out split is empty: {fraction:g} of {len(records)} records rounds to 0. "
            "Raise data.eval_fraction or set data.eval_path to a separate held-out split.")
    if n_eval >= len(records):
        raise ScienceT2IError(
            f"holding out {fraction:g} of {len(records)} records leaves none to train on; "
            "lower data.eval_fraction or set data.eval_path.")
    held = sorted(order[:n_eval])
    train = sorted(order[n_eval:])
    return [records[i] for i in train], [records[i] for i in held]
