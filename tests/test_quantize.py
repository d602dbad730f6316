"""The frozen FLUX base in 8 and 4 bits (model.base): the quantized layers against the
quantization formulas written out, LoRA training on top on CPU (SFT and stage 2), the saved
LoRA on a full-precision base, bad settings."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.lora.files import read_lora
from science_t2i.nodes.core import json_digest
from science_t2i.training.core.config import config_to_dict, load_config
from science_t2i.training.flux import quantize
from science_t2i.training.flux.quantize import quantize_transformer, resolve_base, weight_bytes
from science_t2i.training.sft.config import SFTConfig
from science_t2i.training.sft.trainer import SFTTrainer
from science_t2i.training.stage2.config import Stage2Config
from science_t2i.training.stage2.trainer import Stage2Trainer
from tiny_dpo import dpo_overrides, flux_dir, prompts  # noqa: F401  (shared fixtures)
from tiny_flux import TinyFluxSpec, build_tiny_flux_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The NF4 code book of QLoRA (Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1].
NF4_CODES = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])


def fake_quantized(w: torch.Tensor, base: str) -> torch.Tensor:
    """``w`` quantized and dequantized by the formulas, without torchao."""
    if base == "int8":   # symmetric per output row over the whole int8 range [-128, 127]
        s = w.abs().amax(1, keepdim=True) / 127.5
        # times the reciprocal, not divided: a row's extreme lands at exactly +-127.5 and
        # the two roundings of that tie differ (torchao multiplies)
        return (w * (1 / s)).round().clamp(-128, 127) * s
    if base == "fp8":    # per row, the row's largest weight at e4m3's largest value (448)
        s = w.abs().amax(1, keepdim=True) / 448
        return (w / s).to(torch.float8_e4m3fn).float() * s
    blocks = w.reshape(-1, 64)   # nf4: blocks of 64, each scaled by its largest weight
    scale = blocks.abs().amax(1, keepdim=True)
    nearest = ((blocks / scale).unsqueeze(-1) - NF4_CODES).abs().argmin(-1)
    return (NF4_CODES[nearest] * scale).reshape(w.shape)


def _transformer():
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64,
        axes_dims_rope=(4, 4, 8)).requires_grad_(False)


def _forward(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return model(hidden_states=torch.randn(2, 16, 64, generator=g),
                 encoder_hidden_states=torch.randn(2, 8, 64, generator=g),
                 pooled_projections=torch.randn(2, 64, generator=g),
                 timestep=torch.tensor([0.3, 0.7]), img_ids=torch.zeros(16, 3),
                 txt_ids=torch.zeros(8, 3), return_dict=False)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- the layers

@pytest.mark.parametrize("base,kind", [("int8", "Int8Tensor"), ("fp8", "Float8Tensor"),
                                       ("nf4", "NF4Tensor")])
def test_quantized_transformer_equals_the_formulas_written_out(base, kind):
    model = _transformer()
    full = _forward(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        for name in linears:
            layer = by_hand.get_submodule(name)
            layer.weight.copy_(fake_quantized(layer.weight, base))
    expected = _forward(by_hand)

    assert quantize_transformer(model, base) == len(linears)
    assert {type(model.get_submodule(n).weight).__name__ for n in linears} == {kind}
    got = _forward(model)
    error = (expected - full).norm()
    assert error > 0
    # int8 and fp8 are the formulas exactly (up to float rounding); nf4 also quantizes its
    # block scales to 8 bits (double quantization), a small part of its error
    bound = 0.1 if base == "nf4" else 1e-3
    assert (got - expected).norm() < bound * error, (float((got - expected).norm()), float(error))
    assert _rel(got, full) < {"int8": 0.02, "fp8": 0.08, "nf4": 0.25}[base]


def test_weight_bytes_count_the_quantized_data_and_scales():
    model = _transformer()
    full = weight_bytes(model)
    assert full == sum(p.numel() * 4 for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    rows = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Linear))
    rest = full - 4 * linear
    q8 = copy.deepcopy(model)
    quantize_transformer(q8, "int8")
    # one byte per weight, an fp32 scale and an int8 zero point per row
    assert weight_bytes(q8) == rest + linear + rows * 5
    q4 = copy.deepcopy(model)
    quantize_transformer(q4, "nf4")
    # half a byte per weight plus its block scales (one int8 per 64 weights, an fp32 per 256
    # blocks: double quantization) and each layer's 16-value code book
    assert rest + linear * (0.5 + 1 / 64) < weight_bytes(q4) < rest + 0.53 * linear


def test_lora_gets_gradients_through_a_quantized_base():
    from peft import LoraConfig
    for base in ("int8", "nf4"):
        model = _transformer()
        quantize_transformer(model, base)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        with torch.no_grad():   # lora_B starts at zero, which would leave lora_A no gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        _forward(model).square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert grads and all(n.count("lora_") == 1 for n in grads)
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
                   for g in grads.values())


# ----------------------------------------------------------------------------- SFT

RES = 32


@pytest.fixture(scope="module")
def sft_flux(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("flux_sft")
    build_tiny_flux_pipeline(d, TinyFluxSpec(heads=4))   # 64 wide: every layer quantizable
    return d


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    from PIL import Image
    from science_t2i.training.core.datasets import write_jsonl_dataset
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (RES, RES, 3), dtype=np.uint8))
              for _ in range(4)]
    records = [{"implicit_prompt": f"an unripe tomato {i}", "law": "RI",
                "explicit_image": [im]} for i, im in enumerate(images)]
    return write_jsonl_dataset(records, tmp_path_factory.mktemp("sft_data"))


def _sft(flux, data, out: Path, base: str) -> SFTTrainer:
    cfg = load_config(SFTConfig, None, [
        "preset=pack", f"model.path={flux}", f"model.base={base}", f"data.path={data}",
        "data.split=null", f"data.resolution={RES}", f"output_dir={out}",
        f"cache.dir={out.parent / 'cache'}", "cache.max_sequence_length=32",
        "train.mixed_precision=fp32", "train.batch_size=2", "train.grad_accum=1",
        "train.max_steps=8", "optim.lr=1e-2", "optim.warmup_steps=0", "checkpoint.every=0",
        "log.progress=false", "log.plot_every=0", "train.gradient_checkpointing=true"])
    return SFTTrainer(cfg).setup()


@pytest.fixture(scope="module")
def full_run(sft_flux, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_runs") / "bf16"
    trainer = _sft(sft_flux, sft_data, out, "bf16")
    return trainer, trainer.run()


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if line and "loss" in json.loads(line)]


def _merge_into(transformer, lora_path: Path) -> None:
    """What ComfyUI does with the file: weight += (alpha / rank) * B @ A, layer by layer,
    from the pack's LoRA reader."""
    lf = read_lora(lora_path)
    with torch.no_grad():
        for m in lf.modules:
            a = lf.tensors[f"{m}.lora_A.weight"]
            b = lf.tensors[f"{m}.lora_B.weight"]
            layer = transformer.get_submodule(m.removeprefix("transformer."))
            layer.weight += lf.tensors[f"{m}.alpha"].item() / a.shape[0] * (b @ a)


# bounds: the step-1 loss (noise-dominated, so close) and the trained model's output against the
# LoRA merged into the unquantized base (measured: int8 0.6%, nf4 12%, the base's own error)
@pytest.mark.parametrize("base,loss_bound,out_bound", [("int8", 0.002, 0.02), ("nf4", 0.005, 0.2)])
def test_sft_trains_over_a_quantized_base_and_its_lora_loads_on_a_full_one(
        sft_flux, sft_data, full_run, tmp_path, base, loss_bound, out_bound, caplog):
    from diffusers import FluxTransformer2DModel
    full_trainer, full_lora = full_run
    with caplog.at_level("INFO"):
        trainer = _sft(sft_flux, sft_data, tmp_path / base, base)
    assert f"quantized to {base}" in caplog.text and f"base {base}:" in caplog.text
    lora = trainer.run()
    losses, full_losses = _losses(tmp_path / base), _losses(Path(full_trainer.cfg.output_dir))
    assert len(losses) == 8 and all(np.isfinite(losses))
    print(f"\n{base}: step-1 loss {losses[0]:.5f} vs {full_losses[0]:.5f} over the full base, "
          f"last {losses[-1]:.5f} vs {full_losses[-1]:.5f}")
    # step 1 is the same batch and noise on the frozen base alone (lora_B starts at zero)
    assert losses[0] == pytest.approx(full_losses[0], rel=loss_bound)
    assert min(losses[4:]) < losses[0]

    # same file layout as over the full-precision base
    got, want = read_lora(lora), read_lora(full_lora)
    assert got.format == want.format == "diffusers"
    assert {k: v.shape for k, v in got.tensors.items()} == \
        {k: v.shape for k, v in want.tensors.items()}
    assert all(v.dtype == torch.float32 for v in got.tensors.values())
    assert got.metadata["science_t2i.base"] == base

    # the LoRA merged into the unquantized base reproduces the quantized trained model, up
    # to the base's quantization error
    fresh = FluxTransformer2DModel.from_pretrained(str(sft_flux), subfolder="transformer")
    batch = trainer.model_inputs(trainer.micro_batch(10_000))
    inputs = {k: v for k, v in batch.items() if k != "target"}
    with torch.no_grad():
        plain = fresh(**inputs, return_dict=False)[0]
        _merge_into(fresh, lora)
        merged = fresh(**inputs, return_dict=False)[0]
        trained = trainer.unwrapped(**inputs, return_dict=False)[0]
    assert _rel(merged, plain) > 0.02   # the LoRA changes the output
    assert _rel(trained, merged) < out_bound


# ----------------------------------------------------------------------------- stage 2

@pytest.mark.parametrize("base", ["int8", "nf4"])
def test_stage2_still_learns_over_a_quantized_base(flux_dir, prompts, tmp_path, base):
    from test_dpo import fresh_reward
    cfg = load_config(Stage2Config, None, dpo_overrides(
        flux_dir, prompts, tmp_path / "run", f"model.base={base}", "objective.kind=flow-dpo",
        "rollout.samples_per_prompt=16", "train.rounds=30", "checkpoint.every=1000"))
    trainer = Stage2Trainer(cfg).setup()
    assert type(trainer.unwrapped.transformer_blocks[0].attn.to_q.base_layer.weight) \
        .__name__ in ("Int8Tensor", "NF4Tensor")
    before = fresh_reward(trainer)
    trainer.run()
    after = fresh_reward(trainer)
    print(f"\n{base}: mean brightness of fresh rollouts {before:.4f} -> {after:.4f}")
    assert after > before + 0.01


# ----------------------------------------------------------------------------- bad settings

def test_bad_base_names_and_a_missing_torchao(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ScienceT2IError, match=r"model.base must be one of bf16, 8bit, int8"):
        resolve_base("int4", cpu)
    assert resolve_base("8bit", cpu) == "int8"   # no fp8 hardware on a CPU
    assert resolve_base("bf16", cpu) == "bf16"
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(ScienceT2IError, match=r"comfyui-science-t2i\[quantized\].*bf16"):
        resolve_base("nf4", cpu)
    assert quantize.QUANTIZED_EXTRA.count("[quantized]") == 2


def test_merging_the_sft_lora_into_a_quantized_base_is_refused(flux_dir, prompts, tmp_path):
    overrides = dpo_overrides(flux_dir, prompts, tmp_path, "model.base=nf4",
                              f"model.sft_lora={tmp_path / 'sft.safetensors'}",
                              "model.sft_start=merge")
    with pytest.raises(ScienceT2IError, match="model.sft_start=continue"):
        load_config(Stage2Config, None, overrides)


def test_runs_started_before_the_new_model_keys_and_memory_still_resume(full_run):
    trainer, _ = full_run
    tree = config_to_dict(trainer.cfg)
    # the settings as a run before these keys wrote them
    del tree["memory"]
    for key in ("base", "clip", "t5", "vae", "tokenizers"):
        del tree["model"][key]
    for key in trainer.may_change_on_resume:
        *sections, name = key.split(".")
        node = tree
        for s in sections:
            node = node[s]
        node.pop(name, None)
    assert trainer.resume_digest() == json_digest(tree, 16)
    trainer.cfg.model.base = "nf4"   # not the default: part of the digest
    assert trainer.resume_digest() != json_digest(tree, 16)
    trainer.cfg.model.base = "bf16"


def test_an_sft_lora_is_not_merged_into_quantized_weights(tmp_path):
    from science_t2i.training.flux.reference_policy import merge_lora_into_weights
    model = _transformer()
    quantize_transformer(model, "int8")
    lora = SimpleNamespace(modules=["transformer.transformer_blocks.0.attn.to_q"],
                           delta=lambda m: torch.zeros(64, 64))
    with pytest.raises(ScienceT2IError, match="quantized or fp8 here: set model.sft_start"):
        merge_lora_into_weights(model, lora)
