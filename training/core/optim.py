"""The optimizer (AdamW, or bitsandbytes' 8-bit AdamW on CUDA) and the learning-rate
schedule (diffusers' ``get_scheduler``) of ``optim``."""
from __future__ import annotations

import logging

import torch

from ...nodes.errors import ScienceT2IError
from .sections import OptimSection

log = logging.getLogger(__name__)


def make_optimizer(params: list[torch.nn.Parameter], optim: OptimSection,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW; bitsandbytes' 8-bit AdamW when ``optim.use_8bit`` on CUDA (~75% less optimizer
    memory). On CPU 8-bit AdamW does not exist: torch's AdamW, with a warning."""
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                  eps=optim.eps)
    if optim.use_8bit:
        if device.type != "cuda":
            log.warning("optim.use_8bit needs CUDA; using torch AdamW on %s", device.type)
        else:
            try:
                import bitsandbytes as bnb
            except ImportError as exc:
                raise ScienceT2IError(
                    "optim.use_8bit=true needs bitsandbytes (>=0.43), which is not installed: "
                    "pip install \"comfyui-science-t2i[8bit]\" (from a checkout: pip install -e "
                    "\".[8bit]\"), or set optim.use_8bit=false."
                ) from exc
            return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``optim.schedule`` from diffusers' get_scheduler (warm-up from 0 over
    ``optim.warmup_steps``, then constant, linear or cosine decay to 0 at ``total_steps``).
    Not prepared by accelerate: its wrapper would step it once per process."""
    from diffusers.optimization import get_scheduler
    return get_scheduler(optim.schedule, optimizer, num_warmup_steps=optim.warmup_steps,
                         num_training_steps=max(1, int(total_steps)))
