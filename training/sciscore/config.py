"""SciScore training's settings: data, model (which towers train), run, loss, held-out
evaluation; the ``reference`` preset is the paper's recipe, ``pack`` the pack's."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from ...nodes.errors import ScienceT2IError
from ..core.presets import Preset, resolve_preset
from ..core.sections import CheckpointSection, LogSection, OptimSection, Precision, RunSection
from .loss import DEFAULT_LAMBDA


@dataclass
class DataConfig:
    path: str = ""                  # Science-T2I-format dataset (save_to_disk, parquet, JSON)
    split: str = "train"            # "" = the dataset's only split
    eval_path: str = ""             # held-out dataset; "" = the training dataset
    eval_split: str = "test"        # its split ("" = its only split)
    eval_fraction: float = 0.0      # > 0: hold out this fraction of the training records instead
    eval_limit: int = 0             # score at most this many held-out records (0 = all)
    augment: bool = False           # random crop + flip; off, as in the paper
    preprocess: Literal["exact", "fast"] = "exact"   # pixels as SciScore's processor makes them
    num_workers: int = 4            # image loading threads


@dataclass
class ModelConfig:
    # the paper fine-tunes CLIP-H; continue from SciScore itself to extend it to new data
    init: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    freeze_text_tower: bool = False
    freeze_vision_tower: bool = False
    freeze_logit_scale: bool = False


@dataclass
class TrainConfig(RunSection):
    mixed_precision: Precision = "auto"      # bf16 on CUDA, fp32 elsewhere
    gradient_checkpointing: bool = False
    max_steps: int = 600
    batch_size: int = 1024          # samples per optimizer step, over all processes
    micro_batch_size: int = 16      # samples per forward/backward on one process
    # sum: each process's gradient is that of the loss summed over every process's samples,
    # so W processes step W times the single-process gradient (as the reference, whose every
    # rank sums the loss over the gathered batch); mean: DDP's average (one process's
    # gradient whatever W). None: from the preset
    process_loss: Optional[Literal["sum", "mean"]] = None


@dataclass
class LossConfig:
    lambda_: float = DEFAULT_LAMBDA  # weight of the two image-side terms


@dataclass
class EvalConfig:
    every: int = 10                 # steps between held-out evaluations
    at_start: bool = True           # also evaluate the starting model (step 0)
    batch_size: int = 32            # images per scoring batch


def _paper_optim() -> OptimSection:
    # AdamW lr 2e-6, weight decay 0.3, 150 warm-up steps, clipping at 1.0; the schedule after
    # the warm-up comes from the preset
    return OptimSection(lr=2e-6, weight_decay=0.3, schedule=None, warmup_steps=150)


# option -> (reference implementation, pack); see core/presets.py and README
SCISCORE_PRESETS: dict[str, tuple[Any, Any]] = {
    "optim.schedule": ("constant_with_warmup", "linear"),
    "train.process_loss": ("sum", "mean"),
}


@dataclass
class SciScoreTrainConfig:
    preset: Preset = "reference"
    output_dir: str = "outputs/sciscore"
    save_final: bool = False        # also write the last model as a SciScore folder "final"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimSection = field(default_factory=_paper_optim)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointSection = field(default_factory=lambda: CheckpointSection(
        every=50, keep_last=2))
    log: LogSection = field(default_factory=lambda: LogSection(plot_every=0))

    # keys of earlier versions, so an old config gets a pointer instead of a bare "unknown"
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "optim.max_steps": "train.max_steps", "optim.batch_size": "train.batch_size",
        "optim.micro_batch_size": "train.micro_batch_size",
        "optim.grad_clip": "optim.max_grad_norm", "seed": "train.seed",
        "mixed_precision": "train.mixed_precision",
        "model.gradient_checkpointing": "train.gradient_checkpointing",
        "save_every": "checkpoint.every", "keep_last": "checkpoint.keep_last",
        "progress": "log.progress", "plot_curves": "log.plot"}

    def __post_init__(self) -> None:
        resolve_preset(self, SCISCORE_PRESETS)


def check_config(cfg: SciScoreTrainConfig, world_size: int = 1) -> int:
    """Validate the settings that types alone cannot; returns the accumulation steps."""
    t = cfg.train
    if not cfg.data.path:
        raise ScienceT2IError("data.path is not set: point it at a Science-T2I-format dataset "
                              "(save_to_disk folder, parquet shards or JSON/JSONL records), "
                              "e.g. data.path=/data/Science-T2I-Fullset.")
    for name, value in (("train.max_steps", t.max_steps), ("train.batch_size", t.batch_size),
                        ("train.micro_batch_size", t.micro_batch_size),
                        ("eval.every", cfg.eval.every), ("eval.batch_size", cfg.eval.batch_size)):
        if value <= 0:
            raise ScienceT2IError(f"{name} must be a positive integer; got {value}.")
    per_step = t.micro_batch_size * world_size
    if t.batch_size % per_step:
        raise ScienceT2IError(
            f"train.batch_size={t.batch_size} is not a multiple of micro_batch_size "
            f"{t.micro_batch_size} x {world_size} process(es) = {per_step}; choose e.g. "
            f"train.batch_size={max(1, round(t.batch_size / per_step)) * per_step}.")
    if (cfg.model.freeze_text_tower and cfg.model.freeze_vision_tower
            and cfg.model.freeze_logit_scale):
        raise ScienceT2IError("every part of the model is frozen (text tower, vision tower and "
                              "logit_scale): unfreeze at least one to train.")
    return t.batch_size // per_step
