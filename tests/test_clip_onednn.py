"""The oneDNN image tower (nodes/sciscore/onednn.py) against the libraries' own forwards."""
from __future__ import annotations

import logging

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.sciscore import load_sciscore
from science_t2i.nodes.sciscore import onednn as clip_onednn
from tiny_clip import TINY_OPEN_CLIP_CFG, build_tiny_clip, random_uint8_images, tiny_clip_config

pytestmark = pytest.mark.skipif(not clip_onednn.available(),
                                reason="this PyTorch build has no oneDNN fused linear ops")

PROMPT = "an unripe apple on the table"


def tiny_hf_clip(hidden_act: str = "gelu", seed: int = 0):
    from transformers import CLIPModel
    config = tiny_clip_config(vocab_size=600, image_size=32)
    config.vision_config.hidden_act = hidden_act
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # non-zero biases and norms, so each fused epilogue is exercised
        for name, p in model.vision_model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_open_clip(quick_gelu: bool = False, **vision_overrides):
    import open_clip
    cfg = {**TINY_OPEN_CLIP_CFG,
           "vision_cfg": {**TINY_OPEN_CLIP_CFG["vision_cfg"], **vision_overrides}}
    torch.manual_seed(0)
    return open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu).eval()


def hf_reference(model, pixels):
    out = model.get_image_features(pixel_values=pixels)
    return getattr(out, "pooler_output", out)


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu", "gelu_pytorch_tanh"])
def test_transformers_tower_matches_its_own_forward(hidden_act):
    model = tiny_hf_clip(hidden_act)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        fused = clip_onednn.hf_image_features(model, pixels)
        ref = hf_reference(model, pixels)
    assert fused is not None
    assert fused.shape == ref.shape
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_chunked_batches_give_the_same_features(monkeypatch):
    model = tiny_hf_clip()
    pixels = torch.randn(5, 3, 32, 32)  # 17 tokens per image
    with torch.inference_mode():
        whole = clip_onednn.hf_image_features(model, pixels)
        monkeypatch.setattr(clip_onednn, "CHUNK_ROWS", 40)  # two images per oneDNN call
        calls = []
        real = clip_onednn._run_block
        monkeypatch.setattr(clip_onednn, "_run_block",
                            lambda h, b, n, *a: calls.append(n) or real(h, b, n, *a))
        chunked = clip_onednn.hf_image_features(model, pixels)
        ref = hf_reference(model, pixels)
    assert sorted(set(calls)) == [1, 2] and sum(calls) == 5 * 2  # 2+2+1 images x 2 blocks
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_live_weights_are_used_not_a_stale_copy():
    model = tiny_hf_clip()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = clip_onednn.hf_image_features(model, pixels)
    with torch.no_grad():  # what an optimizer step or a patched weight does
        model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(1.5)
        model.vision_model.encoder.layers[1].self_attn.k_proj.bias.add_(0.3)
    with torch.inference_mode():
        after = clip_onednn.hf_image_features(model, pixels)
        ref = hf_reference(model, pixels)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-5)


def test_steps_aside_where_it_does_not_apply(monkeypatch):
    model = tiny_hf_clip()
    pixels = torch.randn(1, 3, 32, 32)
    # autograd on: the fused ops record no gradients, so training keeps the real forward
    assert clip_onednn.hf_image_features(model, pixels) is None
    with torch.no_grad():
        assert clip_onednn.hf_image_features(model, pixels) is not None
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # switched off by the user
        assert clip_onednn.hf_image_features(model, pixels) is None
        monkeypatch.undo()
        assert torch.backends.mkldnn.enabled
        assert clip_onednn.hf_image_features(model.to(torch.bfloat16),
                                             pixels.to(torch.bfloat16)) is None
        assert clip_onednn.hf_image_features(model.double(), pixels.double()) is None


# erf GELU, tanh GELU (both fused), QuickGELU (applied after the linear)
@pytest.mark.parametrize("options", [{}, {"act_kwargs": {"approximate": "tanh"}},
                                     {"quick_gelu": True}])
def test_open_clip_tower_matches_encode_image(options):
    try:
        model = tiny_open_clip(**options)
    except TypeError:  # an open_clip without act_kwargs
        pytest.skip("this open_clip cannot configure the activation")
    pixels = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        fused = clip_onednn.open_clip_image_features(model, pixels)
        ref = model.encode_image(pixels)
    assert fused is not None
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_open_clip_layer_scale_is_left_to_open_clip():
    model = tiny_open_clip(ls_init_value=0.1)
    with torch.inference_mode():
        assert clip_onednn.open_clip_image_features(model, torch.randn(1, 3, 32, 32)) is None


def hf_text_reference(model, ids, mask):
    out = model.get_text_features(input_ids=ids, attention_mask=mask)
    return getattr(out, "pooler_output", out)


@pytest.mark.parametrize("eos_token_id", [None, 2])  # the config's id, and the legacy argmax
def test_transformers_text_tower_matches_its_own_forward(eos_token_id):
    model = tiny_hf_clip("gelu")
    if eos_token_id is not None:  # configs from before transformers fixed eos pool by argmax
        model.text_model.eos_token_id = eos_token_id
    eos = model.config.text_config.eos_token_id
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, eos - 2, (3, 9), generator=g)
    lengths = [9, 6, 4]  # right padding after each prompt's end-of-text token
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, n - 1], ids[row, n:] = eos, eos  # CLIP pads with its end-of-text id
        mask[row, :n] = 1
    with torch.inference_mode():
        fused = clip_onednn.hf_text_features(model, ids, mask)
        ref = hf_text_reference(model, ids, mask)
    assert fused is not None
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_left_padded_text_is_left_to_transformers():
    model = tiny_hf_clip()
    ids = torch.randint(0, 500, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.inference_mode():
        assert clip_onednn.hf_text_features(model, ids, mask) is None


def test_open_clip_text_tower_matches_encode_text():
    import open_clip
    model = tiny_open_clip()
    tokens = open_clip.get_tokenizer("ViT-B-32")([PROMPT, "a glass of frozen water"])
    with torch.inference_mode():
        fused = clip_onednn.open_clip_text_features(model, tokens)
        ref = model.encode_text(tokens)
    assert fused is not None
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    # a mask that is not open_clip's causal one is left to open_clip
    model.attn_mask = torch.zeros_like(model.attn_mask)
    with torch.inference_mode():
        assert clip_onednn.open_clip_text_features(model, tokens) is None


def fake_cpu(monkeypatch, capability: str, seconds: tuple[float, float] | None = None):
    """A fresh decision cache, ATen reporting ``capability``, and ``measure`` returning
    ``seconds`` (oneDNN, PyTorch); returns the list of measured blocks."""
    monkeypatch.setattr(clip_onednn, "_choices", {})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    measured = []

    def measure(block, rows=clip_onednn.MEASURE_ROWS):
        if seconds is None:
            raise AssertionError("measured where the capability alone decides")
        measured.append(block)
        return seconds
    monkeypatch.setattr(clip_onednn, "measure", measure)
    return measured


@pytest.mark.parametrize("capability,seconds,path", [
    ("AVX512", (1.0, 1.3), "onednn"),     # oneDNN clearly faster
    ("AVX512", (1.0, 1.02), "pytorch"),   # faster, but within the margin
    ("AVX512", (1.3, 1.0), "pytorch"),    # slower
    ("AVX2", None, "pytorch"),            # no AVX-512: not even measured
    ("DEFAULT", None, "pytorch"),
    ("SVE256", None, "pytorch"),
])
def test_auto_rule(monkeypatch, capability, seconds, path):
    measured = fake_cpu(monkeypatch, capability, seconds)
    choice = clip_onednn.auto_choice(tiny_hf_clip())
    assert choice.path == path and capability in choice.reason
    assert len(measured) == (seconds is not None)
    assert clip_onednn.decide(capability, seconds).path == path  # the rule alone agrees


def test_auto_never_picks_the_slower_path():
    ratios = [0.5, 0.9, 0.99, 1.0, 1.01, 1.049, 1.05, 1.051, 1.2, 3.0]  # PyTorch / oneDNN time
    for base in (1e-4, 0.02, 1.0):
        for r in ratios:
            t_onednn, t_torch = base, base * r
            choice = clip_onednn.decide("AVX512", (t_onednn, t_torch))
            if choice.path == "onednn":
                assert t_onednn < t_torch, (r, choice)  # never the slower path
            # and oneDNN wherever it is faster by the margin
            assert (choice.path == "onednn") == (r >= clip_onednn.MARGIN), (r, choice)


def test_auto_decides_once_per_thread_count_and_logs_it(monkeypatch, caplog):
    measured = fake_cpu(monkeypatch, "AVX512", (1.0, 2.0))
    model = tiny_hf_clip()
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="science_t2i"):
        first = clip_onednn.auto_choice(model)
        assert clip_onednn.auto_choice(model) is first  # cached: no second measurement
        assert clip_onednn.auto_choice(tiny_hf_clip(seed=1)) is first  # same shapes
        assert len(measured) == 1
        torch.set_num_threads(1 if before > 1 else 2)
        try:
            clip_onednn.auto_choice(model)  # another thread count is measured on its own
        finally:
            torch.set_num_threads(before)
    assert len(measured) == 2
    logged = [r.getMessage() for r in caplog.records if "SciScore on CPU" in r.getMessage()]
    assert len(logged) == 2 and "oneDNN's fused towers" in logged[0]
    assert "2.00x" in first.reason and first.path == "onednn"


def test_auto_steps_aside_without_measuring(monkeypatch):
    fake_cpu(monkeypatch, "AVX512")  # measuring would raise
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert clip_onednn.auto_choice(tiny_hf_clip()).path == "pytorch"
    monkeypatch.undo()
    fake_cpu(monkeypatch, "AVX512")
    assert clip_onednn.auto_choice(tiny_hf_clip().double()).path == "pytorch"
    assert clip_onednn.auto_choice(torch.nn.Linear(2, 2)).path == "pytorch"  # not a CLIP


def test_auto_falls_back_when_the_measurement_fails(monkeypatch):
    fake_cpu(monkeypatch, "AVX512", (1.0, 2.0))

    def refuse(*args, **kwargs):
        raise RuntimeError("could not create a primitive")
    monkeypatch.setattr(clip_onednn, "measure", refuse)
    choice = clip_onednn.auto_choice(tiny_hf_clip())
    assert choice.path == "pytorch" and "could not create a primitive" in choice.reason


@pytest.mark.parametrize("kind", ["hf", "open_clip"])
def test_measure_times_the_models_own_layer(kind):
    model = tiny_hf_clip() if kind == "hf" else tiny_open_clip()
    block = clip_onednn._sample_block(model)
    first = (model.vision_model.encoder.layers[0].self_attn.out_proj if kind == "hf"
             else model.visual.transformer.resblocks[0].attn.out_proj)
    assert block is not None and block.out is first  # the live layer, not a copy
    t_onednn, t_torch = clip_onednn.measure(block, rows=8)
    assert 0 < t_onednn < 1 and 0 < t_torch < 1


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("onednn") / "tiny", image_size=32, seed=3)


def count_block_runs(monkeypatch) -> list[int]:
    runs = []
    real = clip_onednn._run_blocks
    monkeypatch.setattr(clip_onednn, "_run_blocks",
                        lambda x, b, **kw: runs.append(len(x)) or real(x, b, **kw))
    return runs


# (capability, measured seconds, onednn=...) -> does oneDNN run
@pytest.mark.parametrize("capability,seconds,setting,runs_onednn", [
    ("AVX512", (1.0, 2.0), "auto", True),
    ("AVX512", (2.0, 1.0), "auto", False),
    ("AVX2", None, "auto", False),
    ("AVX2", None, True, True),            # forced on
    ("AVX512", (1.0, 2.0), False, False),  # forced off
])
def test_scorer_path_and_scores(clip_dir, monkeypatch, capability, seconds, setting,
                                runs_onednn):
    images = random_uint8_images(5, 40, 48)
    expected = load_sciscore(str(clip_dir), device="cpu", onednn=False).score(images, PROMPT)
    fake_cpu(monkeypatch, capability, seconds)
    kwargs = {} if setting == "auto" else {"onednn": setting}
    model = load_sciscore(str(clip_dir), device="cpu", batch_size=2, **kwargs)
    assert model.onednn == setting  # "auto" is the default
    runs = count_block_runs(monkeypatch)
    got = model.score(images, PROMPT)
    # the prompt once, then one image tower call per batch
    assert runs == ([1, 2, 2, 1] if runs_onednn else [])
    assert model.cpu_path().path == ("onednn" if runs_onednn else "pytorch")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_scorer_auto_is_off_the_cpu_path_elsewhere(clip_dir, monkeypatch):
    fake_cpu(monkeypatch, "AVX512")  # measuring would raise
    model = load_sciscore(str(clip_dir), device="cpu")
    model.dtype = torch.bfloat16  # as a scorer of bf16 weights has (load_sciscore keeps fp32)
    assert model.cpu_path().path == "pytorch" and "fp32" in model.cpu_path().reason
    model.dtype = torch.float32
    model.module.to(torch.bfloat16)
    assert model.cpu_path().path == "pytorch" and "fp32" in model.cpu_path().reason
    with pytest.raises(ScienceT2IError, match="onednn"):
        load_sciscore(str(clip_dir), device="cpu", onednn="on")


def test_scorer_falls_back_for_good_after_a_kernel_error(clip_dir, monkeypatch, caplog):
    images = random_uint8_images(2, 32, 32)
    expected = load_sciscore(str(clip_dir), device="cpu", onednn=False).score(images, PROMPT)
    fake_cpu(monkeypatch, "AVX512", (1.0, 2.0))
    model = load_sciscore(str(clip_dir), device="cpu")  # auto, choosing oneDNN

    def refuse(*args, **kwargs):
        raise RuntimeError("could not create a primitive")
    monkeypatch.setattr(clip_onednn, "_linear", refuse)
    with caplog.at_level(logging.WARNING, logger="science_t2i"):
        got = model.score(images, PROMPT)
    assert "oneDNN towers failed" in caplog.text and "could not create a primitive" in caplog.text
    assert model.onednn is False
    why = "the oneDNN towers failed (could not create a primitive)"
    assert model.cpu_path() == ("pytorch", why)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("flags,expected", [([], "auto"), (["--onednn", "on"], True),
                                            (["--onednn", "off"], False),
                                            (["--no-onednn"], False)])
def test_cli_flags(monkeypatch, tmp_path, clip_dir, flags, expected):
    from science_t2i.training import cli
    from science_t2i.training.commands import score as score_cmd
    seen = {}
    real = load_sciscore

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr("science_t2i.nodes.sciscore.load_sciscore", spy)
    from PIL import Image
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "a.png")
    assert score_cmd  # the command module registers itself with the CLI
    assert cli.main(["score", str(tmp_path / "a.png"), "--prompt", PROMPT, "--model",
                     str(clip_dir), "--device", "cpu", "--json", *flags]) == 0
    assert seen["onednn"] == expected and type(seen["onednn"]) is type(expected)
