"""SciScore engine: the official score, preprocessing, batching, text cache, bad inputs."""
from __future__ import annotations

import math

import pytest
import torch
from science_t2i.nodes.core.images import to_pil
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.sciscore import (load_sciscore, preference_probabilities, preprocess_images,
                                        rank_order)
from tiny_clip import CLIP_MEAN, CLIP_STD, build_tiny_clip, random_uint8_images, reference_sciscore

PROMPTS = ["an unripe apple on the table", "a glass of frozen water", "red apple"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("sciscore") / "tiny", image_size=32, seed=1)


@pytest.fixture
def model(clip_dir):
    return load_sciscore(str(clip_dir), device="cpu", batch_size=2)


def test_score_is_the_official_definition(model, clip_dir):
    # images at the model's size: the processor and the tensor path see identical pixels
    images = random_uint8_images(5, 32, 32, seed=3)
    pil = [to_pil(im) for im in images]
    ours = model.score(images, PROMPTS[0])
    ref = reference_sciscore(clip_dir, pil, [PROMPTS[0]] * 5)
    assert ours.dtype == torch.float32 and ours.shape == (5,) and ours.device.type == "cpu"
    assert (ours - ref).abs().max().item() < 1e-4
    # one prompt per image, of different token lengths (padding must not change anything)
    per_image = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[1], "a"]
    ours = model.score(images, per_image)
    assert (ours - reference_sciscore(clip_dir, pil, per_image)).abs().max().item() < 1e-4
    # the scale is exp(logit_scale), not the raw parameter
    assert model.logit_scale_exp == pytest.approx(math.exp(model.clip.logit_scale.item()))


def test_embeddings_are_normalised(model):
    img = model.encode_images(random_uint8_images(3, 40, 30))
    txt = model.encode_texts(PROMPTS)
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)


def in_8bit_levels(diff: torch.Tensor) -> torch.Tensor:
    """Normalised-pixel differences [B,3,H,W] expressed in 8-bit levels (undo the std)."""
    return diff.abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0


@pytest.mark.parametrize("hw", [(64, 48), (70, 45), (100, 33), (31, 50), (17, 90), (32, 32),
                                (300, 301)])
def test_preprocessing_matches_clip_image_processor(hw):
    """Tolerance, in 8-bit levels of the input: at most 2 levels for any pixel, and on average
    under 0.3 of a level (exactly 0 where no resize is needed).

    Why: both transformers processors resize 8-bit pixels (PIL's fixed-point bicubic in
    CLIPImageProcessorPil, torchvision's uint8 kernel in CLIPImageProcessor) and round to
    8 bits, PIL even between its horizontal and vertical passes; we resize in float with the
    same kernel (bicubic a=-0.5, antialiased) and round once to 1/255 steps. Values near a
    rounding boundary may land one level apart, two where an intermediate rounding adds up;
    the two transformers backends disagree with each other by the same amount.
    """
    from transformers import CLIPImageProcessor
    from transformers.models.clip import CLIPImageProcessorPil
    kw = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
              image_mean=CLIP_MEAN, image_std=CLIP_STD)
    images = random_uint8_images(2, *hw, seed=hw[0])
    ours = preprocess_images(images, 32, CLIP_MEAN, CLIP_STD)
    assert ours.shape == (2, 3, 32, 32)
    pil = [to_pil(im) for im in images]
    for proc in (CLIPImageProcessor(**kw), CLIPImageProcessorPil(**kw)):
        ref = proc(images=pil, return_tensors="pt")["pixel_values"]
        levels = in_8bit_levels(ours - ref)
        if hw == (32, 32):
            assert levels.max().item() < 1e-3, type(proc).__name__
        assert levels.max().item() <= 2.0 + 1e-3, type(proc).__name__
        assert levels.mean().item() <= 0.3, type(proc).__name__


def test_scores_of_resized_images_stay_close_to_the_reference(model, clip_dir):
    images = random_uint8_images(3, 57, 41, seed=9)
    ref = reference_sciscore(clip_dir, [to_pil(im) for im in images], [PROMPTS[1]] * 3)
    # one-level pixel differences move a cosine-based score only a little
    assert (model.score(images, PROMPTS[1]) - ref).abs().max().item() < 0.05 * model.logit_scale_exp


def test_crop_larger_than_resize_is_padded_like_transformers():
    from transformers import CLIPImageProcessor
    images = random_uint8_images(1, 30, 30, seed=2)
    ours = preprocess_images(images, 24, crop_size=28)
    ref = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 28, "width": 28})(
        images=[to_pil(images[0])], return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 28, 28)
    assert in_8bit_levels(ours - ref).max().item() <= 2.0 + 1e-3


def test_one_and_four_channel_images_are_handled(model):
    rgb = random_uint8_images(2, 36, 36, seed=4)
    grey = rgb[..., :1]
    rgba = torch.cat([rgb, torch.rand(2, 36, 36, 1)], dim=-1)
    s_rgb = model.score(rgb, PROMPTS[0])
    assert torch.allclose(model.score(rgba, PROMPTS[0]), s_rgb, atol=1e-6)  # alpha dropped
    s_grey = model.score(grey, PROMPTS[0])
    assert torch.allclose(s_grey, model.score(grey.expand(-1, -1, -1, 3), PROMPTS[0]), atol=1e-6)


def test_list_of_different_sizes_equals_scoring_each_alone(model):
    a, b, c = (random_uint8_images(1, 40, 30, 1), random_uint8_images(2, 33, 65, 2),
               random_uint8_images(1, 32, 32, 3)[0])  # [H,W,C] accepted too
    together = model.score([a, b, c], PROMPTS[2])
    alone = torch.cat([model.score(a, PROMPTS[2]), model.score(b, PROMPTS[2]),
                       model.score(c, PROMPTS[2])])
    assert together.shape == (4,)
    assert torch.allclose(together, alone, atol=1e-5)


def test_batch_size_does_not_change_scores(clip_dir):
    images = random_uint8_images(5, 40, 40, seed=5)
    s1 = load_sciscore(str(clip_dir), device="cpu", batch_size=1).score(images, PROMPTS[0])
    s5 = load_sciscore(str(clip_dir), device="cpu", batch_size=16).score(images, PROMPTS[0])
    assert torch.allclose(s1, s5, atol=1e-5)


def test_text_cache_hit_does_not_reencode(model, monkeypatch):
    calls = []
    real = model._backend.text_features  # the one text forward pass, whichever kernels run it

    def counting(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(prompts, *args, **kwargs)

    monkeypatch.setattr(model._backend, "text_features", counting)
    images = random_uint8_images(2, 32, 32)
    first = model.score(images, PROMPTS[0])
    assert calls == [1]
    second = model.score(images, PROMPTS[0])
    assert calls == [1]  # cache hit: no text forward pass
    assert torch.equal(first, second)
    model.encode_texts([PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert calls == [1, 1]  # only the new prompt, once
    model.clear_text_cache()
    model.encode_texts([PROMPTS[0]])
    assert calls == [1, 1, 1]


def test_preference_probabilities_are_the_softmax_over_images():
    scores = torch.tensor([21.5, 19.0, 23.25, 20.0])
    probs = preference_probabilities(scores)
    e = [math.exp(s) for s in scores.tolist()]
    expected = torch.tensor([v / sum(e) for v in e])
    assert torch.allclose(probs, expected, atol=1e-6)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_rank_order_best_first(model, clip_dir):
    images = random_uint8_images(6, 32, 32, seed=11)
    ref = reference_sciscore(clip_dir, [to_pil(im) for im in images], [PROMPTS[0]] * 6).tolist()
    expected = sorted(range(6), key=lambda i: -ref[i])
    assert rank_order(model.score(images, PROMPTS[0])) == expected
    assert rank_order(torch.tensor([1.0, 3.0, 3.0, 2.0])) == [1, 2, 3, 0]  # ties: input order


def test_pairwise_probability_follows_the_paper_protocol(model, clip_dir):
    images = random_uint8_images(2, 32, 32, seed=12)
    ref = reference_sciscore(clip_dir, [to_pil(im) for im in images], [PROMPTS[1]] * 2)
    p_first = model.probabilities(images, PROMPTS[1])[0].item()
    assert p_first == pytest.approx(1 / (1 + math.exp(ref[1] - ref[0])), abs=1e-5)


@pytest.mark.parametrize("prompt", ["", "   ", ["a", ""]])
def test_empty_prompt_is_refused(model, prompt):
    with pytest.raises(ScienceT2IError, match="prompt is empty"):
        model.score(random_uint8_images(2, 32, 32), prompt)


def test_prompt_count_must_be_one_or_one_per_image(model):
    with pytest.raises(ScienceT2IError, match="got 2 prompts for 3 images"):
        model.score(random_uint8_images(3, 32, 32), ["a", "b"])


@pytest.mark.parametrize("shape", [(1, 0, 32, 3), (2, 32, 0, 3)])
def test_zero_size_image_is_refused(model, shape):
    with pytest.raises(ScienceT2IError, match="zero-size"):
        model.score(torch.zeros(shape), "apple")


def test_empty_batch_is_refused(model):
    with pytest.raises(ScienceT2IError, match="empty"):
        model.score(torch.zeros(0, 32, 32, 3), "apple")
    with pytest.raises(ScienceT2IError, match="no images"):
        model.score([], "apple")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_image_is_refused(model, bad):
    images = random_uint8_images(3, 32, 32)
    images[1, 5, 5, 0] = bad
    with pytest.raises(ScienceT2IError, match=r"image\(s\) \[1\] contain NaN or infinite"):
        model.score(images, "apple")


def test_channels_first_tensor_is_refused_with_a_hint(model):
    with pytest.raises(ScienceT2IError, match="channels-first"):
        model.score(torch.rand(1, 3, 32, 32), "apple")


def test_bad_batch_size_and_dtype_are_refused(clip_dir):
    with pytest.raises(ScienceT2IError, match="batch_size"):
        load_sciscore(str(clip_dir), device="cpu", batch_size=0)
    with pytest.raises(ScienceT2IError, match="unknown dtype"):
        load_sciscore(str(clip_dir), device="cpu", dtype="fp8")


def test_comfy_loads_through_model_patcher_with_progress(clip_dir, comfy):
    from comfy.model_patcher import ModelPatcher  # the stub the fixture installed
    model = load_sciscore(str(clip_dir), batch_size=2)
    assert isinstance(model.patcher, ModelPatcher)
    assert model.patcher.model.inner is model.clip  # a container ModelPatcher may set attributes on
    scores = model.score(random_uint8_images(5, 32, 32), PROMPTS[0])
    assert scores.shape == (5,)
    assert model.patcher in comfy.loaded  # loaded through comfy.model_management
    bars = [b for b in comfy.progress if b.total == 3]  # ceil(5 / 2) image batches
    assert bars and bars[-1].current == 3


def test_interrupt_is_checked_per_batch(clip_dir, comfy):
    import comfy.model_management as mm
    model = load_sciscore(str(clip_dir), batch_size=2)
    model.encode_texts([PROMPTS[0]])
    seen = []
    real = model._backend.image_features

    def spy(*args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            comfy.interrupt = True  # the user presses Cancel during the second batch
        return real(*args, **kwargs)

    model._backend.image_features = spy
    with pytest.raises(mm.InterruptProcessingException):
        model.score(random_uint8_images(6, 32, 32), PROMPTS[0])
    assert len(seen) == 2  # the third batch never ran
