"""save_flux_lora writes a file that diffusers loads back to the same outputs as the trained
peft model, and that applies the same weight change under ComfyUI's LoRA formula."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.lora.files import read_lora, save_flux_lora
from tiny_lora import forward, peft_lora, tiny_lora_transformer, tiny_transformer


@pytest.fixture(scope="module")
def trained():
    """A tiny transformer whose LoRA scale (alpha / r = 2) is not 1, and its output."""
    t = tiny_lora_transformer(rank=4, alpha=8.0)
    return t, forward(t)


def _diffusers_pipeline_load(path):
    """What FluxPipeline.load_lora_weights does, without building a whole pipeline."""
    from diffusers import FluxPipeline
    fresh = tiny_transformer()
    sd, alphas, metadata = FluxPipeline.lora_state_dict(str(path), return_alphas=True,
                                                        return_lora_metadata=True)
    FluxPipeline.load_lora_into_transformer(sd, network_alphas=alphas, transformer=fresh,
                                            metadata=metadata)
    return fresh


def test_pipeline_loader_reproduces_the_peft_model(trained, tmp_path):
    t, out = trained
    path = save_flux_lora(t, tmp_path / "lora.safetensors")
    base = forward(tiny_transformer())
    assert (out - base).abs().max() > 1e-2  # the LoRA really changes the output
    loaded = forward(_diffusers_pipeline_load(path))
    assert (loaded - out).abs().max() < 1e-5


def test_load_lora_adapter_reproduces_the_peft_model(trained, tmp_path):
    t, out = trained
    path = save_flux_lora(t, tmp_path / "lora.safetensors")
    fresh = tiny_transformer()
    fresh.load_lora_adapter(str(path), prefix="transformer", adapter_name="science")
    assert (forward(fresh) - out).abs().max() < 1e-5


def test_comfy_formula_on_the_written_file_reproduces_the_peft_model(trained, tmp_path):
    """ComfyUI adds (alpha / rank) * up @ down to each weight; merging that by hand into the
    base model must give the peft model's output."""
    t, out = trained
    lf = read_lora(save_flux_lora(t, tmp_path / "lora.safetensors"))
    assert lf.format == "diffusers" and lf.rank == 4
    base = tiny_transformer()
    linears = dict(base.named_modules())
    with torch.no_grad():
        for m in lf.modules:
            A = lf.tensors[f"{m}.lora_A.weight"]
            B = lf.tensors[f"{m}.lora_B.weight"]
            alpha = lf.tensors[f"{m}.alpha"].item()
            linears[m.removeprefix("transformer.")].weight += alpha / A.shape[0] * (B @ A)
    assert (forward(base) - out).abs().max() < 1e-5


def test_rslora_and_rank_pattern_are_folded_correctly(tmp_path):
    t = tiny_lora_transformer(rank=4, alpha=3.0, use_rslora=True,
                              rank_pattern={"^transformer_blocks.0.attn.to_q": 2})
    out = forward(t)
    path = save_flux_lora(t, tmp_path / "lora.safetensors")
    lf = read_lora(path)
    assert lf.ranks["transformer.transformer_blocks.0.attn.to_q"] == 2 and lf.rank == 4
    assert (forward(_diffusers_pipeline_load(path)) - out).abs().max() < 1e-5


def test_metadata(trained, tmp_path):
    t, _ = trained
    config = {"lr": 1e-4, "steps": 10, "data": {"path": "x"}}
    path = save_flux_lora(t, tmp_path / "lora.safetensors", base_model="my/flux",
                          training_config=config, extra_metadata={"stage": "sft", "seed": 7})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["science_t2i.rank"] == "4" and float(meta["science_t2i.alpha"]) == 8.0
    assert meta["science_t2i.base_model"] == "my/flux"
    expected = hashlib.sha256(
        json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert meta["science_t2i.training_config_sha256"] == expected
    assert json.loads(meta["science_t2i.training_config"]) == config
    targets = json.loads(meta["science_t2i.target_modules"])
    assert set(targets) == set(peft_lora(t))
    assert meta["stage"] == "sft" and meta["seed"] == "7"
    diffusers_cfg = json.loads(meta["lora_adapter_metadata"])
    assert diffusers_cfg["transformer.r"] == 4
    # every key carries the transformer. prefix, as FluxPipeline.save_lora_weights writes
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)
    assert len(keys) == 2 * len(targets)


def test_write_is_atomic(trained, tmp_path, monkeypatch):
    t, _ = trained
    path = save_flux_lora(t, tmp_path / "lora.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        save_flux_lora(t, path, training_config={"changed": True})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # no temp file left


def test_missing_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(ScienceT2IError, match="no LoRA adapter named 'sft'"):
        save_flux_lora(tiny_transformer(), tmp_path / "x.safetensors", adapter_name="sft")


def test_reads_a_file_written_by_diffusers_itself(trained, tmp_path):
    """FluxPipeline.save_lora_weights keeps alpha (8, rank 4) only in its metadata."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict
    t, _ = trained
    FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(t),
                                   transformer_lora_adapter_metadata=t.peft_config["default"].to_dict())
    lf = read_lora(tmp_path / "pytorch_lora_weights.safetensors")
    assert lf.format == "diffusers"
    for m, (A, B) in peft_lora(t).items():
        assert lf.alphas[f"transformer.{m}"] == 8.0
        torch.testing.assert_close(lf.delta(f"transformer.{m}"), 2.0 * B @ A)


def test_flux_pipeline_load_lora_weights(tmp_path):
    """The real FluxPipeline.load_lora_weights on a whole (tiny) pipeline loaded from disk."""
    from diffusers import FluxPipeline
    from tiny_flux import build_tiny_flux_pipeline
    from tiny_lora import add_random_lora
    pipe = build_tiny_flux_pipeline(tmp_path / "flux")
    trained = add_random_lora(pipe.transformer, rank=2, alpha=6.0)
    out = forward(trained)
    path = save_flux_lora(trained, tmp_path / "lora.safetensors", base_model=str(tmp_path / "flux"))
    fresh = FluxPipeline.from_pretrained(str(tmp_path / "flux"))
    assert (forward(fresh.transformer) - out).abs().max() > 1e-2
    fresh.load_lora_weights(str(path))
    assert (forward(fresh.transformer) - out).abs().max() < 1e-5
