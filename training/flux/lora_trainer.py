"""What the two FLUX trainers (SFT and stage 2) share on top of the core: a LoRA on the FLUX
transformer, trained in float32 over frozen weights, checkpointed and exported in the
diffusers layout that ComfyUI and ``FluxPipeline.load_lora_weights`` read."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from ..core.config import config_to_dict
from ..core.trainer import Trainer
from .model import LORA_TARGETS

log = logging.getLogger(__name__)


class LoraTrainer(Trainer):
    """A :class:`Trainer` whose trained parameters are a LoRA (``cfg.lora``) on a FLUX
    transformer; ``self.model`` is the (possibly DDP-wrapped) transformer."""

    stage = "lora"   # written into the LoRA file's metadata
    needs = ("accelerate", "diffusers", "peft")
    added_keys = {"model.base": "bf16", "memory": None, "model.clip": "", "model.t5": "",
                  "model.vae": "", "model.tokenizers": ""}
    memory_plan = ""   # the trainer's rows in the memory plan (flux/memory_tiers.py)

    def check_memory(self, resolution: int) -> None:
        """Log the memory tier's settings and planned peak; refuse a tier that cannot fit."""
        from .memory_tiers import check_tier
        line = check_tier(self.memory_plan, self.cfg, resolution)
        if line:
            log.info("%s", line)

    def resolve_model(self) -> Path:
        """The FLUX folder of ``model`` (ComfyUI's single files get a config folder under
        the output folder, written by the main process first)."""
        from .model import resolve_flux_model
        with self.accelerator.main_process_first():
            return resolve_flux_model(self.cfg.model, self.output_dir)

    def load_base(self, model_dir: Any) -> torch.nn.Module:
        """The frozen transformer on the device, in ``model.base``'s precision."""
        from .model import load_transformer
        from .quantize import Fp8StorageLinear, resolve_base
        self.base = resolve_base(self.cfg.model.base, self.device)
        model = load_transformer(model_dir, self.weight_dtype, self.device, self.base)
        if self.base == "bf16" and any(isinstance(m, Fp8StorageLinear) for m in model.modules()):
            self.base = "fp8-file"   # an fp8 single file, kept as it is
        return model

    def setup_lora(self, transformer: torch.nn.Module, total_steps: int,
                   start_from: Any = None) -> None:
        """Attach the LoRA (its gaussian init drawn after seeding, so runs repeat; or, with
        ``start_from``, a LoRA file to keep training, see ``reference_policy.continue_lora``),
        gradient checkpointing when ``train`` asks for it, then the core's optimizer and
        wrapping."""
        from .model import attach_lora
        from .reference_policy import continue_lora
        cfg = self.cfg
        self.seed_everything()
        if start_from is not None:
            params = continue_lora(transformer, start_from, dtype=cfg.lora.dtype)
        else:
            params = attach_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.init,
                                 cfg.lora.targets, dtype=cfg.lora.dtype)
        if cfg.train.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        self.prepare(transformer, params, total_steps)

    def trainer_state(self) -> dict[str, Any]:
        from .model import lora_state
        return {"lora": lora_state(self.unwrapped)}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        from .model import load_lora_state
        load_lora_state(self.unwrapped, state["lora"])

    def write_lora(self, path: str | Path) -> Path:
        """The trained LoRA as a diffusers-layout safetensors file (atomic)."""
        from ...nodes.lora import save_flux_lora
        return save_flux_lora(self.unwrapped, Path(path),
                              training_config=config_to_dict(self.cfg),
                              extra_metadata={"science_t2i.stage": self.stage,
                                              "science_t2i.steps": str(self.step),
                                              "science_t2i.base": getattr(self, "base", "bf16")})


@dataclass
class FluxModelSection:
    """Where the FLUX weights come from and how the frozen base is held (both trainers)."""
    # a diffusers FLUX folder or Hub id, or ComfyUI's transformer file (a path, or a name in
    # models/diffusion_models, unet or checkpoints: flux1-dev.safetensors, fp8 files too)
    path: str = "black-forest-labs/FLUX.1-dev"
    # with a transformer file: the text encoders and VAE (paths or names in models/
    # text_encoders, clip, vae; "" = clip_l / t5xxl_fp16, else t5xxl_fp8_e4m3fn / ae), and
    # where the tokenizers are ("" = open_clip's BPE for CLIP, ComfyUI's T5 tokenizer)
    clip: str = ""
    t5: str = ""
    vae: str = ""
    tokenizers: str = ""
    # the frozen weights: bf16 (the weight dtype), 8bit (fp8 or int8 by GPU), int8, fp8, nf4
    base: str = "bf16"


@dataclass
class LoraSection:
    rank: int = 16
    alpha: float = 16.0
    init: str = "gaussian"
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # fp32: LoRA weights in float32 over a bf16 base (pack); base: in the base weights' dtype,
    # bf16 under bf16 mixed precision (reference). None: from the preset
    dtype: Optional[Literal["base", "fp32"]] = None
