"""FLUX from ComfyUI's own files (model.path = a transformer .safetensors): the BFL-layout
transformer (bf16 and fp8), CLIP-L, T5 (fp16 and fp8) and ae.safetensors load equal to the
models they were written from; SFT trains from them; wrong files are named before loading."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from flux_single_files import to_fp8, write_comfy_files
from safetensors.torch import save_file
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.config import load_config
from science_t2i.training.flux.model import FluxEncoders, load_transformer, resolve_flux_model
from science_t2i.training.sft.config import SFTConfig
from science_t2i.training.sft.trainer import train_sft

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bf16_files(tmp_path_factory):
    return write_comfy_files(tmp_path_factory.mktemp("bf16") / "models")


@pytest.fixture(scope="module")
def fp8_files(tmp_path_factory):
    return write_comfy_files(tmp_path_factory.mktemp("fp8") / "models", fp8=True)


def _use(files, monkeypatch):
    from science_t2i.nodes import _comfy
    monkeypatch.setenv("SCIENCE_T2I_MODELS", str(files["paths"]["vae"].parents[1]))
    _comfy.set_models_dir(None)


def _section(files, **kw):
    base = dict(path="flux1-dev.safetensors", clip="", t5="", vae="",
                tokenizers=str(files["tokenizers"]), base="bf16")
    return SimpleNamespace(**{**base, **kw})


def _forward(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return model(hidden_states=torch.randn(1, 16, 64, generator=g),
                 encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                 pooled_projections=torch.randn(1, 32, generator=g),
                 timestep=torch.tensor([0.4]), guidance=torch.tensor([3.5]),
                 img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)[0]


def _rounded(model, fp8: bool):
    """The in-memory model with its weights as the file stores them."""
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if fp8 and p.ndim == 2:
                p.copy_(p.to(torch.float8_e4m3fn).float())
            elif not fp8:
                p.copy_(p.to(torch.bfloat16).float())
    return m


@pytest.mark.parametrize("fp8", [False, True])
def test_the_transformer_file_loads_equal_to_its_model(bf16_files, fp8_files, tmp_path,
                                                       monkeypatch, fp8, caplog):
    files = fp8_files if fp8 else bf16_files
    _use(files, monkeypatch)
    folder = resolve_flux_model(_section(files), tmp_path)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert (config["num_layers"], config["num_single_layers"], config["guidance_embeds"],
            config["joint_attention_dim"]) == (1, 1, True, 32)
    with caplog.at_level(logging.INFO):
        model = load_transformer(folder, torch.float32, torch.device("cpu"), "bf16")
    original = files["models"]["transformer"]
    expected = _forward(_rounded(original, fp8))
    got = _forward(model)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    if fp8:   # kept as the file's fp8 values, computed in fp32 here (bf16 on a GPU)
        assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
        assert "the file's fp8 weights" in caplog.text
        # within fp8 rounding of the full-precision model
        full = _forward(original)
        assert 0 < float((got - full).norm() / full.norm()) < 0.1


def test_vae_and_text_encoder_files_load_equal_to_their_models(fp8_files, tmp_path,
                                                               monkeypatch):
    import open_clip
    _use(fp8_files, monkeypatch)
    folder = resolve_flux_model(_section(fp8_files), tmp_path)
    enc = FluxEncoders(folder, torch.device("cpu"), torch.float32, max_sequence_length=32)
    models = fp8_files["models"]
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = models["vae"].decode(z).sample
        assert torch.equal(enc.vae.decode(z).sample, want)
    assert enc.latent_scaling() == (0.1159, 0.3611)

    prompts = ["an unripe apple", "Ice   melting on a HOT pan!"]
    seq, pooled = enc.encode_prompts(prompts)
    # the CLIP tokenizer built from open_clip's BPE gives open_clip's own ids
    ids = open_clip.get_tokenizer("ViT-L-14")(prompts)
    clip_tok = enc._load_text()[0]
    ours = clip_tok(prompts, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    n = (ids != 0).sum(1)
    for row, k in enumerate(n.tolist()):
        assert torch.equal(ours[row, :k], ids[row, :k])
    with torch.no_grad():
        assert torch.allclose(pooled, models["clip"](ours).pooler_output, atol=1e-5)
        t5_tok = enc._load_text()[2]
        ids2 = t5_tok(prompts, padding="max_length", max_length=32, truncation=True,
                      return_tensors="pt").input_ids
        t5 = _rounded(models["t5"], fp8=True)   # the fp8 file's values
        assert torch.allclose(seq, t5(ids2)[0], atol=1e-5)


def test_sft_trains_from_comfyui_files(fp8_files, tmp_path, monkeypatch, caplog):
    from safetensors import safe_open
    import numpy as np
    from PIL import Image
    from science_t2i.training.core.datasets import write_jsonl_dataset
    _use(fp8_files, monkeypatch)
    rng = np.random.default_rng(0)
    data = write_jsonl_dataset([
        {"implicit_prompt": f"an unripe tomato {i}", "law": "RI", "explicit_image": [
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))]}
        for i in range(2)], tmp_path / "data")
    cfg = load_config(SFTConfig, None, [
        "preset=pack", "model.path=flux1-dev.safetensors",
        f"model.tokenizers={fp8_files['tokenizers']}", f"data.path={data}", "data.split=null",
        "data.resolution=32", f"output_dir={tmp_path / 'run'}", "cache.max_sequence_length=32",
        "train.mixed_precision=fp32", "train.batch_size=1", "train.grad_accum=1",
        "train.max_steps=2", "optim.lr=1e-3", "checkpoint.every=0", "log.progress=false",
        "log.plot_every=0", "train.gradient_checkpointing=false", "lora.rank=2"])
    with caplog.at_level(logging.INFO):
        lora = train_sft(cfg)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
              .splitlines() if line]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    assert "the file's fp8 weights" in caplog.text
    with safe_open(str(lora), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)


# ----------------------------------------------------------------------------- wrong files

def _header_only(path: Path, shapes: dict[str, tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def test_wrong_files_are_named_before_loading(bf16_files, tmp_path, monkeypatch):
    _use(bf16_files, monkeypatch)
    paths = bf16_files["paths"]
    out = tmp_path / "out"

    def refused(match, **kw):
        with pytest.raises(ScienceT2IError, match=match):
            resolve_flux_model(_section(bf16_files, **kw), out)

    lora = _header_only(tmp_path / "lora.safetensors", {
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 8)})
    refused(r"model.path: .*lora.safetensors is a LoRA, not a FLUX transformer", path=str(lora))
    refused(r"model.clip: .*t5xxl_fp16.safetensors is a T5 text encoder \(give it as "
            r"model.t5\), not a CLIP", clip=str(paths["t5"]))
    refused(r"model.vae: .*clip_l.safetensors is a CLIP", vae=str(paths["clip"]))
    sdxl = _header_only(tmp_path / "sdxl.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (4, 4),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,)})
    refused(r"is a Stable Diffusion / SDXL checkpoint", path=str(sdxl))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(paths["transformer"].read_bytes()[:1 << 20])
    refused(r"cut.safetensors is truncated .* download it again", path=str(cut))
    narrow = _header_only(tmp_path / "narrow.safetensors", {
        "double_blocks.0.img_attn.norm.key_norm.scale": (4,), "img_in.weight": (64, 64)})
    refused(r"width 64 .* FLUX.1 \[dev\] or \[schnell\]", path=str(narrow))
    scaled = _header_only(tmp_path / "scaled.safetensors", {
        "double_blocks.0.img_attn.norm.key_norm.scale": (4,), "img_in.weight": (3072, 64),
        "scaled_fp8": (1,), "double_blocks.0.img_attn.qkv.scale_weight": (1,)})
    refused(r"scaled fp8 format", path=str(scaled))
    refused(r"model.vae: the FLUX VAE file was not found .*missing.safetensors",
            vae="missing.safetensors")
    monkeypatch.setattr("science_t2i.training.flux.single_file.comfyui_roots", lambda: [])
    refused(r"T5 tokenizer was not found .* model.tokenizers", tokenizers="")
    assert not (out / "flux_files").exists()   # every refusal came before writing


def test_fp8_helper_rounds_only_matrices():
    sd = to_fp8({"w": torch.ones(2, 2) * 0.3, "b": torch.ones(2) * 0.3})
    assert sd["w"].dtype == torch.float8_e4m3fn and sd["b"].dtype == torch.float32
