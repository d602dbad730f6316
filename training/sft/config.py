"""Stage 1's settings: the FLUX model, the LoRA, the data and its latent cache, the run's
length and noise-level sampling, sample images; the ``reference`` and ``pack`` presets fill
what is left unset."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ...nodes.errors import ScienceT2IError
from ..core.presets import Preset, resolve_preset
from ..core.sections import (CheckpointSection, LogSection, OptimSection, RunSection,
                             require_at_least)
from ..flux.lora_trainer import FluxModelSection, LoraSection
from ..flux.memory_tiers import fill_from_tier, tier_settings

log = logging.getLogger(__name__)


@dataclass
class ModelSection(FluxModelSection):
    pass


@dataclass
class DataSection:
    path: str = ""                    # Science-T2I-format dataset folder/file (see core/datasets.py)
    split: Optional[str] = "train"
    resolution: int = 512             # the shortest side (and the square's side with crop)
    # None = from the preset. reference: Resize(bilinear) of the shortest side, no crop,
    # small images upscaled; pack: bicubic, centre crop to a square, small images refused
    resample: Optional[Literal["bilinear", "bicubic"]] = None
    crop: Optional[bool] = None
    upscale_small: Optional[bool] = None


@dataclass
class CacheSection:
    enabled: bool = True              # false: encode every batch live (encoders stay loaded)
    dir: str = ""                     # default <output_dir>/latent_cache
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on CUDA, fp32 on CPU
    batch_size: int = 8
    max_sequence_length: int = 512    # T5 tokens, as FluxPipeline


@dataclass
class TrainSection(RunSection):
    # the run's length: optimizer steps, or passes over the records (one of the two;
    # unset both = the preset's: reference 60 epochs, pack 1000 steps)
    max_steps: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int = 4               # samples per process and micro-batch
    grad_accum: int = 8               # micro-batches per optimizer step
    guidance: float = 0.0             # FLUX.1-dev guidance embedding value
    # discrete: one of the scheduler's 1000 training levels (reference); uniform: continuous
    # U(0, 1) (pack); logit_normal / mode: SD3's. None = from the preset
    timestep_sampling: Optional[Literal["discrete", "uniform", "logit_normal", "mode"]] = None
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29


@dataclass
class SampleSection:
    prompts: list[str] = field(default_factory=list)
    every: int = 0                    # 0 = only at the end (when prompts are given)
    steps: int = 20
    seed: int = 0


# option -> (reference implementation, pack); see core/presets.py and README
SFT_PRESETS: dict[str, tuple[Any, Any]] = {
    "train.timestep_sampling": ("discrete", "uniform"),
    "data.resample": ("bilinear", "bicubic"),
    "data.crop": (False, True),
    "data.upscale_small": (True, False),
    "lora.dtype": ("base", "fp32"),
}


@dataclass
class SFTConfig:
    preset: Preset = "reference"
    # the card's size (80gb, 24gb, 16gb, 12gb, 8gb): fills the settings left out from that
    # memory tier (flux/memory_tiers.py); None: none
    memory: Optional[str] = None
    output_dir: str = "runs/sft"
    lora_name: str = "science_t2i_sft.safetensors"
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    cache: CacheSection = field(default_factory=CacheSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    sample: SampleSection = field(default_factory=SampleSection)

    @staticmethod
    def fill_defaults(data: dict[str, Any]) -> None:
        fill_from_tier(data, "sft", {"train.batch_size": TrainSection.batch_size,
                                     "train.grad_accum": TrainSection.grad_accum})

    def __post_init__(self) -> None:
        if self.memory is not None:
            tier_settings(self.memory, "sft")   # an unknown tier fails here
        t = self.train
        if t.max_steps is not None and t.epochs is not None:
            raise ScienceT2IError("set train.max_steps or train.epochs, not both.")
        if t.max_steps is None and t.epochs is None:
            if self.preset == "reference":
                t.epochs = 60
            else:
                t.max_steps = 1000
        resolve_preset(self, SFT_PRESETS)
        require_at_least((("train.max_steps" if t.epochs is None else "train.epochs",
                           t.max_steps if t.epochs is None else t.epochs, 1),
                          ("train.batch_size", t.batch_size, 1),
                          ("train.grad_accum", t.grad_accum, 1),
                          ("data.resolution", self.data.resolution, 16),
                          ("cache.batch_size", self.cache.batch_size, 1)))
