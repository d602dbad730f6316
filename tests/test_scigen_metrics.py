"""SciGenBench's standard metrics (training/eval/scigen/metrics.py) against independent
computations: PSNR by its formula and torchmetrics' own function, SSIM as scikit-image
defines it (sample covariances, interior windows) written out in numpy, CLIP score from a
transformers CLIPModel forward, FID by the Fréchet formula on the same features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.eval.scigen import metrics as sm
from tiny_clip import build_tiny_clip


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth structure plus noise, deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin((3 + c) * xx + 2 * c * yy + seed) for c in range(3)], axis=-1)
    arr = 127.5 + 90 * base + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


def as_batch(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].double()


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's structural_similarity(win_size=3, channel_axis=2, data_range=255):
    3x3 windows inside the image only, sample (co)variances, mean over windows and channels."""
    from numpy.lib.stride_tricks import sliding_window_view
    a, b = a.astype(np.float64), b.astype(np.float64)
    wa = sliding_window_view(a, (3, 3), axis=(0, 1))  # [H-2, W-2, C, 3, 3]
    wb = sliding_window_view(b, (3, 3), axis=(0, 1))
    ua, ub = wa.mean(axis=(-2, -1)), wb.mean(axis=(-2, -1))
    va = wa.var(axis=(-2, -1), ddof=1)
    vb = wb.var(axis=(-2, -1), ddof=1)
    cov = ((wa - ua[..., None, None]) * (wb - ub[..., None, None])).sum(axis=(-2, -1)) / 8
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * ua * ub + c1) * (2 * cov + c2)) / ((ua ** 2 + ub ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


# ----------------------------------------------------------------------------- PSNR / SSIM

@pytest.mark.parametrize("gen_size, real_size", [((40, 32), (40, 32)), ((48, 36), (37, 53))])
def test_psnr_ssim_match_formulas_and_torchmetrics(gen_size, real_size):
    from torchmetrics.functional.image import (peak_signal_noise_ratio,
                                               structural_similarity_index_measure)
    gen = synthetic_image(*gen_size, seed=1)
    real = synthetic_image(*real_size, seed=2)
    got = sm.pixel_metrics(gen, real)

    ref = real.resize(gen.size, Image.BICUBIC) if real.size != gen.size else real
    g, r = np.array(gen).astype(np.float64), np.array(ref).astype(np.float64)
    assert got.psnr == pytest.approx(10 * math.log10(255 ** 2 / np.mean((g - r) ** 2)), abs=1e-6)
    tm_psnr = peak_signal_noise_ratio(as_batch(gen), as_batch(ref), data_range=255.0)
    assert got.psnr == pytest.approx(float(tm_psnr), abs=1e-9)

    assert got.ssim == pytest.approx(skimage_ssim(np.array(ref), np.array(gen)), abs=1e-9)
    # torchmetrics' own function with the two adjustments: k2 * sqrt(8/9), 1-pixel border off
    _, full = structural_similarity_index_measure(
        as_batch(gen), as_batch(ref), gaussian_kernel=False, kernel_size=3, data_range=255.0,
        k2=0.03 * math.sqrt(8 / 9), return_full_image=True)
    assert got.ssim == pytest.approx(float(full[..., 1:-1, 1:-1].mean()), abs=1e-12)
    # and plain torchmetrics is measurably different, which is why they are needed
    plain = structural_similarity_index_measure(as_batch(gen), as_batch(ref),
                                                gaussian_kernel=False, kernel_size=3,
                                                data_range=255.0)
    assert abs(float(plain) - got.ssim) > 1e-4


def test_identical_and_non_rgb_images():
    img = synthetic_image(20, 16, seed=5)
    same = sm.pixel_metrics(img, img.copy())
    assert same.psnr == math.inf and same.ssim == pytest.approx(1.0)
    gray = img.convert("L")
    assert sm.pixel_metrics(gray, img) == sm.pixel_metrics(gray.convert("RGB"), img)
    with pytest.raises(ScienceT2IError, match="PIL image"):
        sm.pixel_metrics(np.array(img), img)


# ----------------------------------------------------------------------------- CLIP

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", image_size=32)


def reference_clip_score(folder, image: Image.Image, prompt: str) -> float:
    """Resize to 224 (torchvision's Resize on PIL is PIL bilinear), uint8 pixels through the
    folder's CLIPProcessor, the reference's 77-token cut, a plain CLIPModel forward."""
    from transformers import CLIPModel, CLIPProcessor
    model = CLIPModel.from_pretrained(str(folder)).eval()
    processor = CLIPProcessor.from_pretrained(str(folder))
    tok = processor.tokenizer
    text = tok.decode(tok(prompt, truncation=True, max_length=77)["input_ids"],
                      skip_special_tokens=True)
    pixels = torch.from_numpy(np.array(image.convert("RGB").resize((224, 224),
                                                                   Image.BILINEAR)))
    with torch.no_grad():
        pv = processor(images=[pixels.permute(2, 0, 1)], return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pv).pooler_output
        ids = tok([text], truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(**ids).pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt).item()
    return 100 * max(cos, 0.0), cos


def test_clip_score_matches_a_clip_forward(tiny_clip):
    metrics = sm.StandardMetrics(clip_model=str(tiny_clip), fid=False)
    prompts = ["a red apple on the table", "frozen water in a glass", "an unripe green apple",
               "ice on the table " * 40]  # the last is far past 77 tokens
    cosines = []
    for i, prompt in enumerate(prompts):
        image = synthetic_image(50 + 7 * i, 40, seed=10 + i)
        got = metrics.add(f"r{i}", image, None, prompt)
        want, cos = reference_clip_score(tiny_clip, image, prompt)
        cosines.append(cos)
        assert set(got) == {"clip"}
        assert got["clip"] == pytest.approx(want, abs=1e-4)
    assert max(cosines) > 0  # not every value is the clamp's zero
    summary = metrics.summary()
    want_mean = sum(metrics.records[f"r{i}"]["clip"] for i in range(4)) / 4
    assert summary["clip"] == pytest.approx(want_mean)
    assert summary["psnr"] is None and summary["pairs"] == 0 and summary["fid"] is None


def test_long_prompt_keeps_the_end_token(tiny_clip):
    _, processor = sm.load_clip_for_score(str(tiny_clip))
    long = "the unripe apple " * 60
    text = sm.truncate_prompt(processor.tokenizer, long)
    assert long.startswith(text) and len(processor.tokenizer(text)["input_ids"]) == 77
    # the processor torchmetrics calls cuts ids itself (as torchmetrics calls it), keeping EOS
    ids = processor(text=[long], return_tensors="pt", padding=True)["input_ids"][0]
    assert len(ids) == 77 and ids[-1].item() == processor.tokenizer.eos_token_id


def test_clip_offline_says_how_to_fetch(models_dir):
    with pytest.raises(ScienceT2IError) as err:
        sm.StandardMetrics(clip_model="openai/clip-vit-base-patch16", fid=False)
    msg = str(err.value)
    assert "hf download openai/clip-vit-base-patch16 --local-dir" in msg
    assert "offline" in msg and not (models_dir / "sciscore").exists()
    with pytest.raises(ScienceT2IError, match="hf download openai/clip-vit-base-patch16"):
        sm.StandardMetrics(clip_model=str(models_dir / "no" / "such" / "clip"), fid=False)


# ----------------------------------------------------------------------------- FID

class PooledFeatures(torch.nn.Module):
    """A tiny stand-in for InceptionV3: 2x2 average pooling and a fixed projection."""
    num_features = 5

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(12, self.num_features, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 299, 299)
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1) @ self.proj


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)); tr sqrt(S1 S2) = tr sqrt(A S2 A) with
    A = sqrt(S1), both from symmetric eigendecompositions."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid_pixels(image: Image.Image) -> torch.Tensor:
    arr = np.array(image.convert("RGB").resize((299, 299), Image.BILINEAR))
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_fid_equals_the_frechet_formula():
    extractor = PooledFeatures()
    metrics = sm.StandardMetrics(clip_model=None, fid_feature_extractor=extractor)
    gens = [synthetic_image(60 + 3 * i, 50, seed=20 + i) for i in range(9)]
    reals = [synthetic_image(40, 45 + 2 * i, seed=40 + i) for i in range(9)]
    for i, (g, r) in enumerate(zip(gens, reals)):
        row = metrics.add(str(i), g, r, "prompt")
        assert set(row) == {"psnr", "ssim", "clip"} and row["clip"] is None
    metrics.add("no-real", gens[0], None, "prompt")  # counts for nothing in FID
    # the reference's torchvision Resize((299, 299)) on PIL is PIL's bilinear resize
    assert all(torch.equal(sm._resized_uint8(g.convert("RGB"), 299), fid_pixels(g)[0])
               for g in gens[:2])
    with torch.no_grad():
        real_f = torch.cat([extractor(fid_pixels(r)) for r in reals]).double().numpy()
        fake_f = torch.cat([extractor(fid_pixels(g)) for g in gens]).double().numpy()
    summary = metrics.summary()
    assert summary["pairs"] == 9 and summary["records"] == 10
    assert summary["fid"] == pytest.approx(frechet_distance(real_f, fake_f), rel=1e-4)
    assert summary["psnr"] == pytest.approx(np.mean([sm.pixel_metrics(g, r).psnr
                                                     for g, r in zip(gens, reals)]))


def test_fid_needs_two_pairs_and_ids_count_once():
    metrics = sm.StandardMetrics(clip_model=None, fid_feature_extractor=PooledFeatures())
    metrics.add("a", synthetic_image(30, 30, 1), synthetic_image(30, 30, 2), "p")
    metrics.add("b", synthetic_image(30, 30, 3), None, "p")
    summary = metrics.summary()
    assert summary["fid"] is None and "at least 2 pairs" in summary["fid_error"]
    with pytest.raises(ScienceT2IError, match="added twice"):
        metrics.add("a", synthetic_image(30, 30, 1), None, "p")
    off = sm.StandardMetrics(clip_model=None, fid=False).summary()
    assert off["fid"] is None and "fid=False" in off["fid_error"]


def test_fid_offline_without_weights_gives_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ScienceT2IError) as err:
        sm.StandardMetrics(clip_model=None)
    msg = str(err.value)
    url = sm.inception_url()
    assert url.startswith("https://") and "curl -L --create-dirs -o " in msg and url in msg
    assert str(tmp_path / "torch") in msg and "fid_weights" in msg
    assert not (tmp_path / "torch").exists()
    with pytest.raises(ScienceT2IError, match="(?s)not found.*curl -L"):
        sm.StandardMetrics(clip_model=None, fid_weights=str(tmp_path / "missing.pth"))


class NotATensor:
    pass


def test_fid_weights_file_is_loaded_safely(tmp_path, monkeypatch):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"x": NotATensor()}, unsafe)
    with pytest.raises(ScienceT2IError, match="weights_only=True"):
        sm.StandardMetrics(clip_model=None, fid_weights=str(unsafe))
    # InceptionV3 with random weights, saved as torch-fidelity's file would be
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    metrics = sm.StandardMetrics(clip_model=None, fid_weights=str(weights))
    loaded = metrics._fid.inception.Conv2d_1a_3x3.conv.weight
    assert torch.equal(loaded, net.Conv2d_1a_3x3.conv.weight)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ScienceT2IError, match="not torch-fidelity's InceptionV3"):
        sm.StandardMetrics(clip_model=None, fid_weights=str(wrong))
