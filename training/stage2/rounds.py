"""What a round is made of, the same on every process: its prompts, the rewards gathered from
every process, and its pairs in training order."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.seeds import generator_for
from .losses import Pair, select_pairs

# a pair in a round's training order: (inner epoch, pair)
Scheduled = tuple[int, Pair]


def round_prompts(prompts: Sequence[Any], seed: int, round_index: int, per_round: int) -> list:
    """Prompts of a round: successive slices of a seeded permutation (reshuffled each pass)."""
    n = len(prompts)
    out = []
    for j in range(per_round):
        epoch, pos = divmod(round_index * per_round + j, n)
        g = generator_for(seed, 11, epoch)
        out.append(prompts[int(torch.randperm(n, generator=g)[pos])])
    return out


def gather_rewards(batch: Any, n_prompts: int) -> torch.Tensor:
    """The rewards of the whole round [P, K], from every process's share (its
    ``prompt_indices`` and ``rewards``)."""
    from accelerate.utils import gather_object
    rows = gather_object([(i, row) for i, row in zip(batch.prompt_indices,
                                                     batch.rewards.tolist())])
    rewards = torch.full((n_prompts, batch.k), float("nan"))
    for i, row in rows:
        rewards[i] = torch.tensor(row, dtype=torch.float32)
    return rewards


def round_plan(rewards: torch.Tensor, seed: int, round_index: int, inner_epochs: int, *,
               keep_ties: bool) -> list[Scheduled]:
    """The round's pairs (best vs worst per prompt; tied prompts kept with zero gap, or
    dropped) in training order: a seeded shuffle per inner epoch."""
    pairs = select_pairs(rewards, keep_ties=keep_ties)
    plan: list[Scheduled] = []
    for epoch in range(inner_epochs):
        g = generator_for(seed, 5, round_index, epoch)
        plan += [(epoch, pairs[i]) for i in torch.randperm(len(pairs), generator=g).tolist()]
    return plan
