"""Stage 2: masked online preference fine-tuning of FLUX (``science-t2i stage2``).

Each round samples images with the current LoRA (``rollouts``: in-process, or on ComfyUI
servers through ``comfy_rollouts``), scores them with a reward chosen by name (``rewards``),
masks the subject, and trains on best-vs-worst pairs (``losses``: the paper's "oft", or
Flow-DPO)."""
from .config import Stage2Config
from .trainer import Stage2Trainer, train_stage2

__all__ = ["Stage2Config", "Stage2Trainer", "train_stage2"]
