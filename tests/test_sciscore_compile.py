"""SciScore's opt-in torch.compile of the image tower: same scores, and a safe fallback."""
from __future__ import annotations

import logging

import pytest
import torch

from science_t2i.nodes.sciscore import load_sciscore
from tiny_clip import build_tiny_clip, random_uint8_images

PROMPT = "an unripe apple on the table"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("sciscore_compile") / "tiny", image_size=32,
                           seed=2)


def test_compiled_scores_equal_eager(clip_dir):
    images = random_uint8_images(5, 40, 36, seed=4)  # batches of 2, 2, 1: two shapes
    eager = load_sciscore(str(clip_dir), device="cpu", batch_size=2)
    compiled = load_sciscore(str(clip_dir), device="cpu", batch_size=2, compile=True)
    expected = eager.score(images, PROMPT)
    got = compiled.score(images, PROMPT)
    # the compiled graph really ran (no silent fallback), and it gives the same scores
    assert compiled._compiled is not None and not compiled._compile_failed
    assert (got - expected).abs().max().item() < 1e-4


def test_failed_compilation_falls_back_to_eager(clip_dir, monkeypatch, caplog):
    calls = []

    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):  # torch.compile fails lazily, on the first call
            calls.append(1)
            raise RuntimeError("no C++ compiler found")
        return run

    images = random_uint8_images(3, 32, 32, seed=5)
    expected = load_sciscore(str(clip_dir), device="cpu").score(images, PROMPT)
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = load_sciscore(str(clip_dir), device="cpu", batch_size=2, compile=True)
    with caplog.at_level(logging.WARNING, logger="science_t2i"):
        got = model.score(images, PROMPT)
        again = model.score(images, PROMPT)
    assert (got - expected).abs().max().item() < 1e-5
    assert torch.equal(got, again)
    assert len(calls) == 1  # tried once, then eager for the rest of the model's life
    assert model._compile_failed and "no C++ compiler found" in caplog.text

