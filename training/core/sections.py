"""Config sections every trainer shares: the optimizer and its schedule, the run (seed,
precision), checkpoints and logging (the FLUX trainers' ``lora`` section is in ``flux``).

Each trainer's config nests these under the same names (``optim``, ``train``, ``checkpoint``,
``log``) and only changes defaults or adds its own fields (its ``train``
section extends :class:`RunSection`), so the trainer core reads them the same way for all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ...nodes.errors import ScienceT2IError

# accelerate's mixed precision, named as users write it; auto = bf16 on CUDA, fp32 elsewhere
Precision = Literal["auto", "bf16", "fp16", "fp32"]

# diffusers.optimization.get_scheduler's names (the same as transformers'); the reference
# trainers use constant_with_warmup
Schedule = Literal["constant_with_warmup", "constant", "linear", "cosine", "cosine_with_restarts",
                   "polynomial"]

# accelerate's tracker names that log.trackers accepts
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive",
            "swanlab", "trackio")


def require_at_least(checks: tuple[tuple[str, float, float], ...]) -> None:
    """(setting name, value, lowest allowed) -> a clear error for the first one too small."""
    for name, value, low in checks:
        if value < low:
            raise ScienceT2IError(f"{name} must be >= {low}; got {value}.")


@dataclass
class OptimSection:
    """AdamW and its learning-rate schedule (the library's, by name)."""
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0        # 0 disables clipping
    schedule: Optional[Schedule] = "constant_with_warmup"   # None: from the trainer's preset
    warmup_steps: int = 0             # optimizer steps of linear warm-up from 0
    use_8bit: bool = False            # bitsandbytes AdamW8bit (CUDA only)

    def __post_init__(self) -> None:
        if not self.lr > 0:  # also refuses nan
            raise ScienceT2IError(f"optim.lr must be > 0; got {self.lr}.")
        require_at_least((("optim.warmup_steps", self.warmup_steps, 0),
                          ("optim.max_grad_norm", self.max_grad_norm, 0)))


@dataclass
class RunSection:
    """What every run has; each trainer's ``train`` section extends it."""
    seed: int = 0
    mixed_precision: Precision = "bf16"   # fp32 on CPU (with a warning when asked for half)
    gradient_checkpointing: bool = True


@dataclass
class CheckpointSection:
    every: int = 100                  # optimizer steps; 0 = only at the end
    keep_last: int = 3                # 0 keeps every checkpoint

    def __post_init__(self) -> None:
        require_at_least((("checkpoint.every", self.every, 0),
                          ("checkpoint.keep_last", self.keep_last, 0)))


@dataclass
class LogSection:
    every: int = 1                    # optimizer steps between log lines
    plot: bool = True                 # curves PNG (loss, lr, ...) beside log.jsonl
    plot_every: int = 50              # optimizer steps between plots; 0 = only at the end
    progress: bool = True             # progress bar (main process)
    trackers: list[str] = field(default_factory=list)   # e.g. [tensorboard] or [wandb]
    project: str = ""                 # tracker project name; "" = science-t2i-<trainer>

    def __post_init__(self) -> None:
        require_at_least((("log.every", self.every, 1), ("log.plot_every", self.plot_every, 0)))
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ScienceT2IError(f"log.trackers: unknown tracker(s) {unknown}; accelerate "
                                  f"knows {', '.join(TRACKERS)}.")
