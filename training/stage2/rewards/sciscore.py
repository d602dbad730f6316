"""The paper's reward: SciScore of each image against its own prompt, through the node code
(``reward.model``, ``batch_size``, ``dtype`` and ``preprocess`` as ``load_sciscore`` takes
them)."""
from __future__ import annotations

from typing import Any

import torch

from ....nodes import _comfy
from ....nodes.sciscore import load_sciscore


def build(section: Any, device: Any = None):
    scorer = load_sciscore(section.model, device=device, dtype=section.dtype,
                           batch_size=section.batch_size, preprocess=section.preprocess)

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = scorer.score(images, list(prompts)).float().cpu()
        _comfy.offload(scorer.patcher)   # on the GPU only while scoring
        return scores
    return reward
