"""Stage-1 SFT on a tiny random FLUX built offline: learning, cache reuse, exact resume,
crash safety, LoRA loading in diffusers, bad inputs."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.config import load_config
from science_t2i.training.core.datasets import write_jsonl_dataset
from science_t2i.training.sft.config import SFTConfig
from science_t2i.training.sft.trainer import SFTTrainer, train_sft
from tiny_flux import build_tiny_flux_pipeline

RES = 32   # tiny VAE downsamples 2x: a 16x16 latent, 64 packed tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _noise_image(seed: int, size=(RES, RES), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), "RGB" if mode == "RGB" else "L")


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("flux")
    build_tiny_flux_pipeline(d)
    return d


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    records = [
        {"implicit_prompt": ["an unripe tomato", "a tomato picked too early"],
         "explicit_prompt": "a green tomato", "law": "RI",
         "explicit_image": [_noise_image(0, (40, 48)), _noise_image(1)]},
        {"implicit_prompt": "butter on a hot pan", "law": "ME",
         "explicit_image": [_noise_image(2, (36, 32))]},
    ]
    return write_jsonl_dataset(records, d)


def _cfg(flux_dir, data_path, out, *extra: str) -> SFTConfig:
    # the pack's preset (crop, continuous timesteps): these tests check its behaviour; the
    # reference preset has its own tests (test_reference_preset.py)
    return load_config(SFTConfig, None, [
        "preset=pack", f"model.path={flux_dir}", f"data.path={data_path}", "data.split=null",
        f"data.resolution={RES}", f"output_dir={out}", "cache.max_sequence_length=32",
        "train.mixed_precision=fp32", "train.batch_size=2", "train.grad_accum=2",
        "train.max_steps=6", "optim.lr=1e-3", "optim.warmup_steps=2", "checkpoint.every=2",
        "checkpoint.keep_last=2", "log.progress=false", "log.plot_every=0",
        "train.gradient_checkpointing=false", *extra])


def _lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.fixture(scope="module")
def straight_run(flux_dir, data_path, tmp_path_factory):
    """6 uninterrupted steps; other tests compare against it."""
    out = tmp_path_factory.mktemp("straight")
    lora = train_sft(_cfg(flux_dir, data_path, out, f"cache.dir={out.parent / 'shared_cache'}"))
    return out, lora


# ----------------------------------------------------------------------------- learning

def test_overfitting_two_records_lowers_the_loss_and_lora_loads_in_diffusers(
        flux_dir, data_path, tmp_path):
    from diffusers import FluxPipeline
    cfg = _cfg(flux_dir, data_path, tmp_path / "run", "train.max_steps=30", "train.grad_accum=1",
               "optim.lr=1e-2", "optim.warmup_steps=0", "checkpoint.every=0",
               "train.gradient_checkpointing=true",
               "sample.prompts=[an unripe tomato]", "sample.steps=2")
    trainer = SFTTrainer(cfg).setup()
    # fixed evaluation batches (seeded, independent of training): loss before and after
    evals = [trainer.model_inputs(trainer.micro_batch(10_000 + i)) for i in range(6)]

    def eval_loss(model) -> float:
        from science_t2i.training.flux.flow_matching import flow_matching_loss
        with torch.no_grad():
            return float(np.mean([flow_matching_loss(
                model(**{k: v for k, v in e.items() if k != "target"}, return_dict=False)[0],
                e["target"]).item() for e in evals]))

    before = eval_loss(trainer.transformer)
    lora_path = trainer.run()
    after = eval_loss(trainer.transformer)
    assert after < 0.92 * before, (before, after)

    out = Path(cfg.output_dir)
    logged = [line for line in (out / "log.jsonl").read_text().splitlines() if line]
    assert len(logged) == 30
    assert {"loss", "lr", "it_s", "grad_norm", "sigma_mean"} <= set(json.loads(logged[-1]))
    assert (out / "loss.png").stat().st_size > 1000
    assert len(list((out / "samples").glob("*.png"))) == 1

    # the LoRA file loads with diffusers' own loader and reproduces the trained model
    pipe = FluxPipeline.from_pretrained(str(flux_dir))
    base_loss = eval_loss(pipe.transformer)
    assert base_loss == pytest.approx(before, rel=1e-4)
    pipe.load_lora_weights(str(lora_path))
    assert eval_loss(pipe.transformer) == pytest.approx(after, rel=1e-3)


def test_cache_is_built_once_then_reused_without_encoders(flux_dir, data_path, tmp_path,
                                                          monkeypatch):
    from science_t2i.training.flux import model as flux_model
    cache = tmp_path / "cache"
    calls = {"prompts": 0, "images": 0}
    real_p, real_i = flux_model.FluxEncoders.encode_prompts, flux_model.FluxEncoders.encode_images

    def count_p(self, prompts):
        calls["prompts"] += len(prompts)
        return real_p(self, prompts)

    def count_i(self, pixels):
        calls["images"] += len(pixels)
        return real_i(self, pixels)

    monkeypatch.setattr(flux_model.FluxEncoders, "encode_prompts", count_p)
    monkeypatch.setattr(flux_model.FluxEncoders, "encode_images", count_i)
    SFTTrainer(_cfg(flux_dir, data_path, tmp_path / "a", f"cache.dir={cache}")).setup()
    assert calls == {"prompts": 3, "images": 3}   # every distinct prompt and image, once
    shards = sorted(cache.glob("*.safetensors"))

    def boom(*a, **k):
        raise AssertionError("an encoder was used although everything is cached")

    for name in ("encode_prompts", "encode_images", "_load_text"):
        monkeypatch.setattr(flux_model.FluxEncoders, name, boom)
    monkeypatch.setattr(flux_model.FluxEncoders, "vae", property(boom))
    trainer = SFTTrainer(_cfg(flux_dir, data_path, tmp_path / "b", f"cache.dir={cache}")).setup()
    assert trainer.train_step()["loss"] > 0
    assert sorted(cache.glob("*.safetensors")) == shards
    assert trainer.encoders._vae is None and trainer.encoders._text is None

    # another resolution is another cache entry: the encoders are needed again
    with pytest.raises(AssertionError, match="encoder was used"):
        SFTTrainer(_cfg(flux_dir, data_path, tmp_path / "c", f"cache.dir={cache}",
                        "data.resolution=16")).setup()


def test_live_encoding_matches_cached_training(flux_dir, data_path, straight_run, tmp_path):
    """cache.enabled=false encodes every batch on the fly; the maths is the same."""
    out, lora = straight_run
    cfg = _cfg(flux_dir, data_path, tmp_path / "live", "cache.enabled=false",
               "train.max_steps=2")
    trainer = SFTTrainer(cfg).setup()
    live = trainer.micro_batch(0)
    cached_trainer = SFTTrainer(_cfg(flux_dir, data_path, tmp_path / "cached",
                                     f"cache.dir={out.parent / 'shared_cache'}")).setup()
    cached = cached_trainer.micro_batch(0)
    for f in ("mean", "std", "t5", "pooled"):
        assert torch.allclose(getattr(live, f), getattr(cached, f), atol=1e-5), f


# ----------------------------------------------------------------------------- resume

def test_three_steps_resume_three_steps_equals_six_straight(flux_dir, data_path, straight_run,
                                                            tmp_path):
    _, lora_straight = straight_run
    out = tmp_path / "split"
    shared = f"cache.dir={Path(straight_run[0]).parent / 'shared_cache'}"
    train_sft(_cfg(flux_dir, data_path, out, shared, "train.max_steps=3"))
    lora_split = train_sft(_cfg(flux_dir, data_path, out, shared), resume=True)
    a, b = _lora_tensors(lora_straight), _lora_tensors(lora_split)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)   # it did train
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changed_settings_or_missing_checkpoint(flux_dir, data_path,
                                                               straight_run, tmp_path):
    out, _ = straight_run
    with pytest.raises(ScienceT2IError, match="different"):
        SFTTrainer(_cfg(flux_dir, data_path, out, "optim.lr=5e-4"), resume=True).setup()
    with pytest.raises(ScienceT2IError, match="no checkpoint"):
        SFTTrainer(_cfg(flux_dir, data_path, tmp_path / "fresh"), resume=True).setup()


_CHILD = textwrap.dedent("""
    import sys, time, safetensors.torch as st
    from science_t2i.training.cli import main
    real, writes = st.save_file, []
    def save_file(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        if ".tmp-checkpoint-" in str(filename) and str(filename).endswith("state.safetensors"):
            writes.append(filename)
            if len(writes) == 2:   # the step-4 checkpoint: half on disk when the kill comes
                data = open(filename, "rb").read()
                open(filename, "wb").write(data[: len(data) // 2])
                print("WRITING", flush=True)
                time.sleep(120)
    st.save_file = save_file
    sys.exit(main(["sft", "--config", sys.argv[1]]))
""")


def test_sigkill_during_checkpoint_write_then_resume_is_exact(flux_dir, data_path,
                                                              straight_run, tmp_path):
    from science_t2i.training.core.config import save_config
    _, lora_straight = straight_run
    out = tmp_path / "killed"
    cfg = _cfg(flux_dir, data_path, out,
               f"cache.dir={Path(straight_run[0]).parent / 'shared_cache'}")
    save_config(cfg, tmp_path / "cfg.yaml")
    env = dict(os.environ, SCIENCE_T2I_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "cfg.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if line.strip() != "WRITING":
            proc.wait(timeout=60)
            pytest.fail(f"child did not reach the checkpoint write: {line!r}\n{proc.stderr.read()}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == \
        ["checkpoint-00000002"]
    assert any(p.name.startswith(".tmp-checkpoint-") for p in ckpts.iterdir())
    assert not (out / cfg.lora_name).exists()
    lora = train_sft(cfg, resume=True)
    a, b = _lora_tensors(lora_straight), _lora_tensors(lora)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not any(p.name.startswith(".tmp") for p in ckpts.iterdir())
    assert [p.name for p in sorted(ckpts.iterdir())] == ["checkpoint-00000004",
                                                         "checkpoint-00000006"]


# ----------------------------------------------------------------------------- bad inputs

def _dataset(tmp_path, records) -> Path:
    return write_jsonl_dataset(records, tmp_path / "badset")


def test_missing_image_file(flux_dir, tmp_path):
    path = _dataset(tmp_path, [{"implicit_prompt": "x", "explicit_image": [_noise_image(0)]}])
    for img in (tmp_path / "badset" / "images").iterdir():
        img.unlink()
    with pytest.raises(ScienceT2IError, match="not found"):
        SFTTrainer(_cfg(flux_dir, path, tmp_path / "o")).setup()


def test_small_images_refused_unless_upscaling_asked_for(flux_dir, tmp_path):
    path = _dataset(tmp_path, [{"implicit_prompt": "x",
                                "explicit_image": [_noise_image(0, (20, 40))]}])
    with pytest.raises(ScienceT2IError, match="upscale_small"):
        SFTTrainer(_cfg(flux_dir, path, tmp_path / "o")).setup()
    trainer = SFTTrainer(_cfg(flux_dir, path, tmp_path / "o2", "data.upscale_small=true")).setup()
    assert trainer.micro_batch(0).mean.shape == (2, 4, RES // 2, RES // 2)


def test_non_rgb_images_are_converted(flux_dir, tmp_path):
    from science_t2i.training.core.datasets import ImageRef
    from science_t2i.training.flux.latent_cache import load_image_tensor
    gray = Image.new("L", (RES, RES), 51)
    rgba = Image.new("RGBA", (RES, RES), (255, 0, 0, 128))
    pal = Image.new("RGB", (RES, RES), (0, 0, 255)).convert("P")
    for img, rgb in ((gray, (51, 51, 51)), (rgba, (255, 0, 0)), (pal, (0, 0, 255))):
        f = tmp_path / f"{img.mode}.png"
        img.save(f)
        t = load_image_tensor(ImageRef(path=f), RES)
        assert t.shape == (3, RES, RES)
        expected = torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(t[:, 5, 5], expected, atol=1e-6)
    path = _dataset(tmp_path, [{"implicit_prompt": "x", "explicit_image": [gray, rgba, pal]}])
    trainer = SFTTrainer(_cfg(flux_dir, path, tmp_path / "o")).setup()
    assert np.isfinite(trainer.train_step()["loss"])


def test_resize_and_centre_crop_against_pil(tmp_path):
    from science_t2i.training.core.datasets import ImageRef
    from science_t2i.training.flux.latent_cache import load_image_tensor
    img = _noise_image(7, (64, 48))
    f = tmp_path / "a.png"
    img.save(f)
    ref = img.resize((43, 32), Image.BICUBIC).crop((5, 0, 37, 32))   # shortest side 48 -> 32
    expected = torch.from_numpy(np.asarray(ref, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(load_image_tensor(ImageRef(path=f), 32), expected, atol=1e-6)


def test_empty_prompt_lists(flux_dir, tmp_path):
    path = _dataset(tmp_path, [{"implicit_prompt": ["", "  "], "explicit_image": [_noise_image(0)]}])
    with pytest.raises(ScienceT2IError, match="implicit_prompt"):
        SFTTrainer(_cfg(flux_dir, path, tmp_path / "o")).setup()


def test_config_typos_through_the_cli(tmp_path, capsys):
    from science_t2i.training.cli import main
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_step: 3\n")
    assert main(["sft", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "'train.max_step'" in err and "max_steps" in err
    assert main(["sft", "optim.lr=fast"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["sft", "--print-config", "train.max_steps=7"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "lr: 2.0e-05" in printed and "rank: 16" in printed
    assert main(["sft", "model.path=/nonexistent", "data.path=/x"]) == 2


def test_bf16_on_cpu_falls_back_to_fp32_with_a_warning(flux_dir, data_path, tmp_path, caplog):
    cfg = _cfg(flux_dir, data_path, tmp_path / "o", "train.mixed_precision=bf16")
    with caplog.at_level(logging.WARNING):
        trainer = SFTTrainer(cfg).setup()
    assert "fp32" in caplog.text and "bf16" in caplog.text
    assert trainer.precision == "no"
    assert all(p.dtype == torch.float32 for p in trainer.transformer.parameters())


def test_paper_defaults():
    cfg = SFTConfig()
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.init) == (16, 16.0, "gaussian")
    assert cfg.lora.targets == ["to_k", "to_q", "to_v", "to_out.0"]
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == (2e-5, (0.9, 0.999), 1e-4)
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.data.resolution) == (4, 8, 512)
    assert (cfg.train.mixed_precision, cfg.train.guidance) == ("bf16", 0.0)
    # the reference implementation's settings by default (sft_flux.py, config/custom.py)
    assert cfg.preset == "reference"
    assert (cfg.train.timestep_sampling, cfg.train.epochs, cfg.train.max_steps) == \
        ("discrete", 60, None)
    assert (cfg.data.resample, cfg.data.crop, cfg.data.upscale_small, cfg.lora.dtype) == \
        ("bilinear", False, True, "base")
    pack = load_config(SFTConfig, None, ["preset=pack"])
    assert (pack.train.timestep_sampling, pack.train.epochs, pack.train.max_steps) == \
        ("uniform", None, 1000)
    assert (pack.data.resample, pack.data.crop, pack.data.upscale_small, pack.lora.dtype) == \
        ("bicubic", True, False, "fp32")
    # an option set by hand wins over the preset
    mixed = load_config(SFTConfig, None, ["preset=pack", "train.timestep_sampling=discrete",
                                          "train.epochs=2"])
    assert (mixed.train.timestep_sampling, mixed.data.crop, mixed.train.epochs,
            mixed.train.max_steps) == ("discrete", True, 2, None)
    with pytest.raises(ScienceT2IError, match="not both"):
        load_config(SFTConfig, None, ["train.epochs=2", "train.max_steps=3"])


def test_optimizer_and_lora_setup(flux_dir, caplog):
    from science_t2i.training.core.optim import make_optimizer
    from science_t2i.training.core.sections import OptimSection
    from science_t2i.training.flux.model import attach_lora, load_transformer
    model = load_transformer(flux_dir, torch.float32, torch.device("cpu"))
    with pytest.raises(ScienceT2IError, match="to_qq"):
        attach_lora(model, targets=["to_qq"])
    params = attach_lora(model)
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    # gaussian init: A ~ N(0, 1/r), B = 0 (the adapter starts as the identity)
    assert all(float(b.detach().abs().max()) == 0 for b in lora_b)
    a = torch.cat([p.detach().flatten() for p in lora_a])
    assert float(a.std()) == pytest.approx(1 / 16, rel=0.15)
    assert {n.split(".lora_A")[0].split("attn.")[-1] for n, _ in model.named_parameters()
            if "lora_A" in n} == {"to_k", "to_q", "to_v", "to_out.0"}
    assert sum(p.numel() for p in params) == sum(p.numel() for p in lora_a + lora_b)
    with caplog.at_level(logging.WARNING):
        opt = make_optimizer(params, OptimSection(lr=1e-4, use_8bit=True), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and "CUDA" in caplog.text
