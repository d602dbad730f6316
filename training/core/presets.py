"""Trainer presets: ``reference`` reproduces the paper's reference implementation, ``pack``
keeps this pack's own choices. Each difference is also a named option of its own.

A preset only fills the options left unset (None in the dataclass), so ``preset=pack
objective.ties=keep`` mixes the two. Resolution happens when the config is built, so
``config.yaml``, the run's settings digest and the LoRA metadata hold the values used.
"""
from __future__ import annotations

from typing import Any, Literal

from ...nodes.errors import ScienceT2IError

Preset = Literal["reference", "pack"]
PRESETS = ("reference", "pack")


def resolve_preset(cfg: Any, table: dict[str, tuple[Any, Any]]) -> None:
    """Set every dotted option of ``table`` that is None in ``cfg`` to the preset's value;
    ``table`` maps option -> (reference value, pack value)."""
    if cfg.preset not in PRESETS:
        raise ScienceT2IError(f"preset must be one of {', '.join(PRESETS)}; got {cfg.preset!r}.")
    which = PRESETS.index(cfg.preset)
    for key, values in table.items():
        *path, name = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        if getattr(node, name) is None:
            setattr(node, name, values[which])
