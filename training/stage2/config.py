"""Stage 2's settings: the model and the SFT LoRA it starts from, rollouts, the reward (by
name, ``rewards``), the subject mask, the objective (the paper's "oft", or Flow-DPO), the
run's length and ComfyUI servers; the ``reference`` and ``pack`` presets fill what is left
unset."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from ...nodes.errors import ScienceT2IError
from ..core.presets import Preset, resolve_preset
from ..core.sections import (CheckpointSection, LogSection, OptimSection, RunSection,
                             require_at_least)
from ..flux.lora_trainer import FluxModelSection, LoraSection
from ..flux.memory_tiers import fill_from_tier, tier_settings
from .rewards import reward_for

log = logging.getLogger(__name__)


DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "rollout.json"


@dataclass
class ModelSection(FluxModelSection):
    sft_lora: str = ""        # stage-1 LoRA to start from; it becomes the reference policy
    # continue: keep training the SFT LoRA, the reference a frozen copy of it (reference
    # implementation); merge: merge it into the weights, train a new LoRA (pack). None: preset
    sft_start: Optional[Literal["continue", "merge"]] = None


@dataclass
class RolloutSection:
    prompts: str = ""         # JSON list of {"prompt", "object"} (science_t2i_rollout_prompts.json)
    source: Literal["in-process", "comfy"] = "in-process"
    prompts_per_round: int = 8    # over all processes: each samples its share
    samples_per_prompt: int = 2
    steps: int = 30
    churn: float = 0.1
    guidance: float = 0.0
    resolution: int = 512
    batch_size: int = 8       # images sampled per forward pass
    max_sequence_length: int = 512
    # where the rollout prompts' T5/CLIP embeddings are kept, encoded once before training
    # so the text encoders are not in memory while sampling; "" = <output_dir>/prompt_cache
    prompt_cache: str = ""


@dataclass
class RewardSection:
    kind: str = "sciscore"    # a name in rewards.REWARDS (brightness: synthetic, smoke runs)
    model: str = "Jialuo21/SciScore"
    batch_size: int = 16
    # fp32 (reference implementation) or auto (fp16 on CUDA, fp32 on CPU). None: preset
    dtype: Optional[Literal["fp32", "auto", "fp16", "bf16"]] = None
    preprocess: Literal["exact", "fast"] = "exact"   # SciScore's pixels (nodes/sciscore/preprocess.py)

    def __post_init__(self) -> None:
        reward_for(self.kind)  # an unknown name fails here, with the names there are


@dataclass
class MaskSection:
    enabled: bool = True      # the paper: without the mask, training collapses
    model: str = "IDEA-Research/grounding-dino-tiny"
    box_threshold: float = 0.35
    text_threshold: float = 0.25


@dataclass
class ObjectiveSection:
    kind: Literal["oft", "flow-dpo"] = "oft"
    eps: float = 0.1          # oft: ratio clamp
    beta: float = 10.0        # oft
    flow_dpo_beta: float = 100.0
    timestep_fraction: float = 1.0   # oft: share of the recorded timesteps trained (paper: all)
    timestep_sampling: Literal["uniform", "logit_normal", "mode"] = "uniform"   # flow-dpo
    # matrix: the reference's mean over the 2x2 matrix of sample pairs, (L + 3 ln 2) / 4;
    # pair: L, the winner-vs-loser term alone. None: from the preset
    pair_loss: Optional[Literal["matrix", "pair"]] = None
    # keep: prompts whose rewards tie stay in the step (zero gradient, counted in the mean,
    # as the reference); drop: they give no pair. None: from the preset
    ties: Optional[Literal["keep", "drop"]] = None


@dataclass
class TrainSection(RunSection):
    rounds: Optional[int] = None          # None: preset (reference 39 = epochs 61-99; pack 100)
    inner_epochs: int = 1
    pairs_per_step: Optional[int] = None  # pairs per micro-batch on one process (oft: all
    #                                       timesteps); None: preset (reference 2, pack 1)
    grad_accum: int = 1       # micro-batches per process and optimizer step


@dataclass
class ComfySection:
    servers: list[str] = field(default_factory=list)   # http://HOST:PORT[=LORA_DIR]
    lora_dir: str = ""        # folder every server's LoRA loader reads (when not per server)
    workflow: str = ""        # default: workflows/api/rollout.json
    poll_interval: float = 1.0
    timeout: float = 1800.0


# option -> (reference implementation, pack); see core/presets.py and README
STAGE2_PRESETS: dict[str, tuple[Any, Any]] = {
    "model.sft_start": ("continue", "merge"),
    "objective.pair_loss": ("matrix", "pair"),
    "objective.ties": ("keep", "drop"),
    "train.rounds": (39, 100),
    "train.pairs_per_step": (2, 1),
    "reward.dtype": ("fp32", "auto"),
    "lora.dtype": ("base", "fp32"),
}


@dataclass
class Stage2Config:
    preset: Preset = "reference"
    # the card's size (80gb, 24gb, 16gb, 12gb, 8gb): fills the settings left out from that
    # memory tier (flux/memory_tiers.py); None: none
    memory: Optional[str] = None
    output_dir: str = "runs/dpo"
    lora_name: str = "science_t2i_oft.safetensors"
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=3e-4))
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardSection = field(default_factory=RewardSection)
    mask: MaskSection = field(default_factory=MaskSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=lambda: CheckpointSection(every=10))
    # plot_every counts rounds here
    log: LogSection = field(default_factory=lambda: LogSection(plot_every=1))
    comfy: ComfySection = field(default_factory=ComfySection)

    @staticmethod
    def fill_defaults(data: dict[str, Any]) -> None:
        fill_from_tier(data, "stage2", {})

    def __post_init__(self) -> None:
        if self.memory is not None:
            tier_settings(self.memory, "stage2")   # an unknown tier fails here
        resolve_preset(self, STAGE2_PRESETS)
        r, t = self.rollout, self.train
        if self.objective.pair_loss == "matrix" and r.samples_per_prompt != 2:
            raise ScienceT2IError(
                "objective.pair_loss=matrix reproduces the reference's 2x2 loss, which samples "
                f"2 images per prompt; rollout.samples_per_prompt is {r.samples_per_prompt}: "
                "set it to 2, or objective.pair_loss=pair.")
        require_at_least((("rollout.prompts_per_round", r.prompts_per_round, 1),
                          ("rollout.samples_per_prompt", r.samples_per_prompt, 2),
                          ("rollout.steps", r.steps, 1),
                          ("rollout.batch_size", r.batch_size, 1),
                          ("train.rounds", t.rounds, 1),
                          ("train.inner_epochs", t.inner_epochs, 1),
                          ("train.pairs_per_step", t.pairs_per_step, 1),
                          ("train.grad_accum", t.grad_accum, 1)))
        if self.objective.kind == "oft" and r.source == "comfy":
            raise ScienceT2IError(
                "objective.kind=oft needs the sampler's per-step log-probabilities, which only "
                "in-process rollouts record; use objective.kind=flow-dpo with ComfyUI servers.")
        if self.objective.kind == "oft" and r.churn <= 0:
            raise ScienceT2IError("objective.kind=oft needs a stochastic sampler: rollout.churn "
                                  "> 0 (the paper uses 0.1).")
        if self.model.base != "bf16" and self.model.sft_lora and self.model.sft_start == "merge":
            raise ScienceT2IError(
                f"model.sft_start=merge adds the SFT LoRA into the frozen weights, which a "
                f"quantized base (model.base={self.model.base}) cannot take: set "
                "model.sft_start=continue (the SFT LoRA trains on, a frozen copy is the "
                "reference), or model.base=bf16.")
        if not 0 < self.objective.timestep_fraction <= 1:
            raise ScienceT2IError("objective.timestep_fraction must be in (0, 1].")
