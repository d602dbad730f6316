"""Stage-2 rewards, chosen by name in the config (``reward.kind``).

A reward scores the round's images: (images [B,H,W,3] in 0..1, their prompts) -> float32
scores [B] on the CPU, higher is better. Each module here has ``build(section, device)``,
which makes that function once per run from the config's ``reward`` section. To add a
reward: its module, and its line in ``REWARDS``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ....nodes.errors import ScienceT2IError
from . import brightness, sciscore

__all__ = ["REWARDS", "Reward", "RewardFn", "build_reward", "reward_for"]

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


@dataclass(frozen=True)
class Reward:
    build: Callable[[Any, Any], RewardFn]   # (reward section, device) -> RewardFn
    # ComfyUI rollouts: the rollout graph scores the images itself (its PNGs carry the scores)
    scored_in_graph: bool = False


REWARDS: dict[str, Reward] = {
    "sciscore": Reward(sciscore.build, scored_in_graph=True),
    "brightness": Reward(brightness.build),
}


def reward_for(kind: str) -> Reward:
    if kind not in REWARDS:
        raise ScienceT2IError(f"reward.kind {kind!r} is unknown; use one of "
                              f"{', '.join(REWARDS)}.")
    return REWARDS[kind]


def build_reward(section: Any, device: Any = None) -> RewardFn:
    """The reward ``section.kind`` names, built from the ``reward`` section."""
    return reward_for(section.kind).build(section, device)
