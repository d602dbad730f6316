"""SciScore preprocessing: the exact mode gives the very pixels CLIPImageProcessor (PIL) or
open_clip's transform computes, for any image; Pillow's resize reproduced bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.sciscore import load_sciscore
from science_t2i.nodes.sciscore.pil_resample import installed_pillow_order, resize_uint8
from science_t2i.nodes.sciscore.preprocess import CLIP_MEAN, CLIP_STD, preprocess_images
from tiny_clip import build_tiny_clip, pil_clip_processor

# documented in README ("SciScore pixels"): fast mode's largest difference to the processor
# on these images, in 8-bit levels (measured 21 on images >= 224 px, 28 upscaling tiny ones)
FAST_MAX_LEVELS = 28.5


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n uint8 images of mixed sizes and aspect ratios: noise, gradients, sharp edges,
    tiny ones and 4096 px ones."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 1), (2, 3), (7, 5), (31, 17), (224, 224), (225, 224), (4096, 4096 // 8),
             (300, 4096), (4096, 1000)]
    out = []
    for i in range(n):
        h, w = sizes[i] if i < len(sizes) else tuple(int(v) for v in rng.integers(8, 900, 2))
        kind = i % 4
        if kind == 0:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 1:       # gradients
            y, x = np.mgrid[0:h, 0:w]
            img = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1),
                            (x + y) * 127 / max(h + w - 2, 1)], -1).astype(np.uint8)
        elif kind == 2:       # sharp edges: black/white blocks and a saturated stripe
            img = np.zeros((h, w, 3), np.uint8)
            img[: h // 2, : w // 3] = 255
            img[:, w // 2: w // 2 + max(1, w // 20), 0] = 255
        else:                 # smooth noise
            small = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
        out.append(img)
    return out


def _ours(arr: np.ndarray, **kw) -> torch.Tensor:
    x = torch.from_numpy(arr.copy()).float().div(255).unsqueeze(0)   # a ComfyUI IMAGE
    return preprocess_images(x, 224, CLIP_MEAN, CLIP_STD, crop_size=224, **kw)


def test_exact_mode_equals_clip_image_processor_on_200_images():
    processor = pil_clip_processor()()
    worst_fast = 0.0
    for i, arr in enumerate(_images(200)):
        ref = processor(images=Image.fromarray(arr), return_tensors="pt")["pixel_values"]
        ours = _ours(arr)
        assert ours.dtype == torch.float32 and ours.shape == ref.shape == (1, 3, 224, 224)
        assert torch.equal(ours, ref), f"image {i} {arr.shape}: max diff " \
                                       f"{(ours - ref).abs().max():.3g}"
        levels = (_ours(arr, mode="fast") - ref) * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
        worst_fast = max(worst_fast, float(levels.abs().max()))
    assert 0 < worst_fast <= FAST_MAX_LEVELS


def test_exact_mode_equals_open_clip_transform():
    open_clip = pytest.importorskip("open_clip")
    transform = open_clip.image_transform(224, is_train=False)
    for arr in _images(24, seed=1):
        ref = transform(Image.fromarray(arr)).unsqueeze(0)
        assert torch.equal(_ours(arr, convention="torchvision"), ref), arr.shape


@pytest.mark.parametrize("kind,pil", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_resize_equals_pillow_in_both_pass_orders(kind, pil):
    rng = np.random.default_rng(2)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        oh, ow = (int(v) for v in rng.integers(1, 300, 2))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(arr).permute(2, 0, 1)
        got = resize_uint8(x, oh, ow, kind).permute(1, 2, 0).numpy()
        assert np.array_equal(got, np.asarray(Image.fromarray(arr).resize((ow, oh), pil)))
        # Pillow < 13 (the reference's): horizontal pass, 8-bit rounding, vertical pass; two
        # one-axis PIL resizes are exactly those passes
        two_step = Image.fromarray(arr).resize((ow, h), pil).resize((ow, oh), pil)
        got = resize_uint8(x, oh, ow, kind, order="horizontal-first").permute(1, 2, 0).numpy()
        assert np.array_equal(got, np.asarray(two_step))
    assert installed_pillow_order() in ("horizontal-first", "pillow13")


def test_float_images_round_to_the_levels_the_reference_scores():
    # the reference turns the float image into uint8 by (x * 255).round(); off-grid values
    # (a VAE decode) must land on the same levels
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 50, 70, 3, generator=g)
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
    processor = pil_clip_processor()()
    ref = processor(images=[Image.fromarray(a.numpy()) for a in u8],
                    return_tensors="pt")["pixel_values"]
    assert torch.equal(preprocess_images(x, 224, crop_size=224), ref)


def test_scores_equal_a_transformers_forward_on_the_processors_pixels(tmp_path):
    from transformers import AutoTokenizer, CLIPModel
    folder = build_tiny_clip(tmp_path / "clip", image_size=32, seed=4)
    arrays = [a for a in _images(12, seed=5) if min(a.shape[:2]) >= 2]
    prompts = [f"a frozen lake {i}" for i in range(len(arrays))]
    model = CLIPModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    processor = pil_clip_processor().from_pretrained(str(folder))
    with torch.no_grad():
        pixels = processor(images=[Image.fromarray(a) for a in arrays],
                           return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
        img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
        ref = model.logit_scale.exp() * torch.nn.functional.cosine_similarity(img, txt)
    images = [torch.from_numpy(a).float().div(255) for a in arrays]
    for onednn in (True, False):
        scorer = load_sciscore(str(folder), device="cpu", batch_size=4, onednn=onednn)
        assert scorer.preprocess == "exact"
        assert (scorer.score(images, prompts) - ref).abs().max().item() < 1e-5
    fast = load_sciscore(str(folder), device="cpu", preprocess="fast")
    assert (fast.score(images, prompts) - ref).abs().max().item() > 1e-5
    with pytest.raises(Exception, match="preprocess"):
        load_sciscore(str(folder), device="cpu", preprocess="pil")
