"""Seeds derived from tuples of integers, so every random draw (a sample, a round, a
purpose) has its own stream whatever process draws it and however many processes run."""
from __future__ import annotations

import hashlib

import torch


def seed_for(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (seed, purpose, index, ...): independent streams
    for every sample, round and purpose, whatever process draws them."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))
