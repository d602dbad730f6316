"""Memory tiers: ``memory=80gb|24gb|16gb|12gb|8gb`` picks a named set of settings by the
card's size, for SFT and stage 2, and the planned peak is printed at start.

A tier only fills settings the user left out (the config file's and the command line's keys
win), so ``memory=16gb rollout.batch_size=2`` is the tier with one change. SFT keeps the
effective batch: when the tier lowers ``train.batch_size`` and ``train.grad_accum`` is not
given, the accumulation grows to match (the paper's 4 x 8 becomes 1 x 32).

The planned peaks come from ``benchmarks/memory.py`` (FLUX.1-dev at full size, fake tensors
and exact weight counts; ``training/configs/memory_plan.json``, rewritten by its
``--write-plan``); other resolutions are interpolated in image tokens, which the activations
grow with. A tier whose plan does not fit its card at the chosen resolution is refused
before any work.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from typing import Any

from ...nodes.errors import ScienceT2IError
from ..core.config import has_dotted, put_dotted

log = logging.getLogger(__name__)

# tier: the card's memory (GiB), the frozen base, SFT's micro-batch, and stage 2's rollout
# batch, pairs per step and SciScore batch; every tier checkpoints gradients, and below 80 GB
# SciScore runs in fp16 (reward.dtype=auto)
_TABLE = {"80gb": (80, "bf16", 4, 8, 2, 16), "24gb": (24, "8bit", 2, 4, 1, 16),
          "16gb": (16, "8bit", 1, 1, 1, 8), "12gb": (12, "nf4", 1, 1, 1, 4),
          "8gb": (8, "nf4", 1, 1, 1, 2)}
TIERS: dict[str, dict[str, Any]] = {
    tier: {"gib": gib,
           "sft": {"model.base": base, "train.batch_size": sft_batch},
           "stage2": {"model.base": base, "rollout.batch_size": rollouts,
                      "train.pairs_per_step": pairs, "reward.batch_size": scores,
                      **({"reward.dtype": "auto"} if gib < 80 else {})}}
    for tier, (gib, base, sft_batch, rollouts, pairs, scores) in _TABLE.items()}
_COMMON = {"train.gradient_checkpointing": True}
PLAN_FILE = "memory_plan.json"
PLAN_RESOLUTIONS = (512, 1024)


def tier_settings(tier: str, trainer: str) -> dict[str, Any]:
    if tier not in TIERS:
        raise ScienceT2IError(f"memory must be one of {', '.join(TIERS)} (the card's size); "
                              f"got {tier!r}.")
    return {**_COMMON, **TIERS[tier][trainer]}


def fill_from_tier(data: dict[str, Any], trainer: str, defaults: dict[str, Any]) -> None:
    """Fill the raw config tree ``data`` (the keys the user gave) from its ``memory`` tier.
    ``defaults`` holds the trainer's train.batch_size and train.grad_accum defaults (SFT)."""
    tier = data.get("memory")
    tier = getattr(tier, "raw", tier)   # a command-line value: its text
    if tier is None or tier in ("null", "None", ""):
        return
    settings = tier_settings(str(tier), trainer)
    for key, value in settings.items():
        if not has_dotted(data, key):
            put_dotted(data, key, value)
    if trainer == "sft" and "train.batch_size" in settings and \
            not has_dotted(data, "train.grad_accum"):
        effective = defaults["train.batch_size"] * defaults["train.grad_accum"]
        batch = data["train"]["batch_size"]
        batch = getattr(batch, "parsed", batch)
        if isinstance(batch, int) and batch > 0:   # anything else fails with its own error
            put_dotted(data, "train.grad_accum", max(1, -(-effective // batch)))


@lru_cache(maxsize=1)
def load_plan() -> dict[str, Any]:
    text = resources.files("science_t2i.training.configs").joinpath(PLAN_FILE).read_text()
    return json.loads(text)


def planned_peak(trainer: str, tier: str, resolution: int) -> float:
    """The planned peak (GiB the card needs) of ``trainer`` at ``tier``'s settings and
    ``resolution``: the plan's rows, linear in image tokens between and beyond them."""
    rows: dict[int, float] = {}
    for r in load_plan()["rows"]:   # an 8bit tier has an int8 and an fp8 row: the larger
        if r["trainer"] == trainer and r["tier"] == tier:
            rows[r["resolution"]] = max(rows.get(r["resolution"], 0.0), r["peak_gib"])
    lo, hi = PLAN_RESOLUTIONS
    tokens = lambda res: (res // 16) ** 2   # noqa: E731  (FLUX's image tokens)
    slope = (rows[hi] - rows[lo]) / (tokens(hi) - tokens(lo))
    return rows[lo] + slope * (tokens(resolution) - tokens(lo))


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_tier(trainer: str, cfg: Any, resolution: int) -> str | None:
    """The line to log for the run's tier (``cfg.memory``), or None without one; refuses a
    tier whose plan does not fit its card at ``resolution``."""
    tier = cfg.memory
    if tier is None:
        return None
    card = TIERS[tier]["gib"]
    peak = planned_peak(trainer, tier, resolution)
    if peak > card:
        fits = [t for t in TIERS if planned_peak(trainer, t, resolution) <= TIERS[t]["gib"]]
        smaller = [res for res in (1024, 768, 512) if planned_peak(trainer, tier, res) <= card]
        hint = (f"use a lower resolution ({smaller[0]} px plans "
                f"{planned_peak(trainer, tier, smaller[0]):.1f} GiB)" if smaller else
                "no resolution fits it")
        raise ScienceT2IError(
            f"memory={tier}: {trainer} at {resolution} px is planned at {peak:.1f} GiB, more "
            f"than a {card} GB card holds; {hint}, or a larger tier "
            f"({', '.join(fits) or 'none fits'}). The plan: benchmarks/memory.py.")
    settings = tier_settings(tier, trainer)
    changed = [f"{k}={_value(cfg, k)}" for k, v in settings.items() if _value(cfg, k) != v]
    note = (f"; changed from the tier: {', '.join(changed)} (not in the plan)"
            if changed else "")
    text = ", ".join(f"{k}={v}" for k, v in settings.items())
    return (f"memory={tier}: {text}; planned peak at {resolution} px {peak:.1f} GiB of a "
            f"{card} GB card (benchmarks/memory.py){note}")
