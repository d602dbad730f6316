"""The tests' tiny-model builders (tests/tiny_*.py) for the benchmarks, and the FLUX model the
training benchmarks time steps on.

tests/ is a folder of plain modules (pytest puts it on its path), so the builders are loaded
from their files here, a sibling builder they import registered first.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load(name: str) -> ModuleType:
    """tests/<name>.py as module ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while defining
    spec.loader.exec_module(mod)
    return mod


def tiny_flux() -> ModuleType:
    load("tiny_clip")  # tiny_flux imports its tokenizer alphabet from it
    return load("tiny_flux")


def step_spec(tf: ModuleType):
    """FLUX's layout at a size a CPU trains in seconds: 16 latent channels, guidance
    embedding, 2 double + 4 single blocks of width 256."""
    return tf.TinyFluxSpec(latent_channels=16, vae_blocks=(32, 64, 64, 64), clip_hidden=128,
                           t5_hidden=256, t5_max_length=128, heads=4, head_dim=64,
                           axes_dims_rope=(8, 28, 28), num_layers=2, num_single_layers=4,
                           guidance_embeds=True)
