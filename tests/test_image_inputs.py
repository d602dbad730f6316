"""IMAGE inputs that used to be silently wrong: 0..255 or -1..1 tensors clamped to white or
black, 16-bit PNGs clipped at 255."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.core.images import as_rgb_batch, from_pil, rgb8
from science_t2i.nodes.errors import ScienceT2IError


def test_out_of_range_images_are_refused_with_the_likely_cause():
    x = torch.rand(1, 8, 8, 3)
    with pytest.raises(ScienceT2IError, match="0..255 values: divide the image by 255"):
        as_rgb_batch(x * 255)
    with pytest.raises(ScienceT2IError, match=r"-1..1 values: map them with \(x \+ 1\) / 2"):
        as_rgb_batch(x * 2 - 1)
    with pytest.raises(ScienceT2IError, match="span"):
        as_rgb_batch(x * 1.3)
    # rounding noise (a VAE decode slightly past 1) is clamped, as before
    y = as_rgb_batch(x * 1.005 - 0.002)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(as_rgb_batch(x), x)


def test_16_bit_grey_pngs_are_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    f = tmp_path / "g16.png"
    Image.fromarray(ramp).save(f)
    with Image.open(f) as img:
        assert img.mode in ("I;16", "I")          # how Pillow opens a 16-bit grey PNG
        t = from_pil(img)
        rgb = rgb8(img)
    expected = ramp.astype(np.float32) / 65535
    assert t.shape == (1, 32, 64, 3)
    assert np.allclose(t[0, ..., 0].numpy(), expected, atol=1e-6)
    assert float((t == 1.0).float().mean()) < 0.01       # was 99.6% white
    assert np.array_equal(np.asarray(rgb)[..., 1], np.round(expected * 255).astype(np.uint8))
    # 8-bit images are unchanged
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal((from_pil(Image.fromarray(arr))[0] * 255).round().numpy(), arr)


def test_overlay_positions_put_the_label_where_they_say():
    from science_t2i.nodes.sciscore.overlay import POSITIONS, draw_label
    img = torch.full((60, 90, 3), 0.5)
    where = {}
    for pos in POSITIONS + ("middle-left", "bottom-center"):
        changed = ((draw_label(img, "SciScore 1.0", pos, font_size=10) - img).abs()
                   .amax(-1) > 1e-6).nonzero().float()
        where[pos] = (changed[:, 0].mean().item(), changed[:, 1].mean().item())   # (row, col)
    assert where["middle"][0] == pytest.approx(30, abs=3) and \
        where["middle"][1] == pytest.approx(45, abs=3)
    assert where["top-left"][0] < 15 and where["top-left"][1] < 45
    assert where["bottom-right"][0] > 45 and where["bottom-right"][1] > 45
    assert where["middle-left"][0] == pytest.approx(30, abs=3) and where["middle-left"][1] < 45
    assert where["bottom-center"][1] == pytest.approx(45, abs=3)
    with pytest.raises(ScienceT2IError, match="unknown label position"):
        draw_label(img, "x", "centre-ish")


def test_a_nan_mask_is_refused_by_the_latent_mask_node():
    from science_t2i.nodes.masks.boxes import latent_mask
    m = torch.zeros(1, 64, 64)
    m[0, 10:20, 10:20] = 1
    assert latent_mask(m).shape[-1] == 8
    m[0, 0, 0] = float("nan")
    with pytest.raises(ScienceT2IError, match=r"mask\(s\) \[0\] contain NaN"):
        latent_mask(m)


def test_prompts_past_77_tokens_say_how_many_tokens_were_dropped(tmp_path, caplog):
    import logging

    from science_t2i.nodes.sciscore import load_sciscore
    from science_t2i.nodes.sciscore.node_classes import NODE_CLASS_MAPPINGS
    from tiny_clip import build_tiny_clip
    folder = build_tiny_clip(tmp_path / "clip", image_size=32, seed=2)
    model = load_sciscore(str(folder), device="cpu")
    long_prompt = " ".join(["frozen"] * 100)
    count = model._backend.token_count(long_prompt)
    assert count > 77
    images = torch.rand(2, 32, 32, 3)
    with caplog.at_level(logging.WARNING):
        out = NODE_CLASS_MAPPINGS["ScienceT2I_SciScore"]().score(model, images, long_prompt)
    summary = out["result"][1]
    assert f"cut at 77 tokens, {count - 77} dropped" in summary
    assert f"the last {count - 77} are not scored" in caplog.text
    short = NODE_CLASS_MAPPINGS["ScienceT2I_SciScore"]().score(model, images, "ice")
    assert "cut at" not in short["result"][1]


def test_dataset_images_in_16_bit_are_scaled(tmp_path):
    from science_t2i.training.core.datasets import ImageRef
    ramp = (np.linspace(0, 65535, 16 * 16).reshape(16, 16)).astype(np.uint16)
    f = tmp_path / "g16.png"
    Image.fromarray(ramp).save(f)
    img = ImageRef(path=f).open()
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img)[..., 0], np.round(ramp / 257).astype(np.uint8))
