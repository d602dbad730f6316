"""Peak GPU memory of the trainers' phases at full size, without a GPU and without weights.

Two counts, put together by ``benchmarks/memory.py``:
- **activations** (everything a step creates: saved tensors, recomputed blocks, attention,
  gradients of the LoRA, outputs): the real model code runs on PyTorch fake tensors (shapes and
  dtypes, no storage) while ``LiveBytes`` follows the bytes of every storage created and
  still referenced, op by op; its high-water mark is the phase's peak. On the CPU, fake
  ``scaled_dot_product_attention`` dispatches to the flash kernel, which like the CUDA flash
  and memory-efficient kernels keeps no sequence x sequence matrix.
- **weights** (exact counts): a quantized layer cannot run under fake tensors, so the frozen
  transformer's bytes are counted per layer shape by quantizing one real layer of that shape
  with the trainers' own code (``training/flux/quantize.py``) and measuring its data and
  scales (``weight_bytes``).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable, Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GiB = 2 ** 30

# FLUX.1-dev's transformer and VAE (their config.json); SciScore is a CLIP ViT-H/14
# (laion/CLIP-ViT-H-14 shapes); GroundingDINO tiny is transformers' default config
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
CLIP_H = dict(text_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                               num_hidden_layers=24),
              vision_config=dict(hidden_size=1280, intermediate_size=5120,
                                 num_attention_heads=16, num_hidden_layers=32, patch_size=14,
                                 image_size=224),
              projection_dim=1024)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# FLUX.1's layout at a size a CPU runs: 2 double + 4 single blocks of width 1024
SMALL_FLUX = dict(FLUX_DEV, num_layers=2, num_single_layers=4, num_attention_heads=8)
TEXT_TOKENS = 512   # T5 tokens of the cached / encoded prompts (the trainers' default)


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the block and still referenced: current and peak.

    Storages that exist before (weights, inputs) are named in ``existing`` and never counted,
    so views of them (a transposed weight) add nothing."""

    def __init__(self, existing: Any = ()):
        super().__init__()
        self.known = {t.untyped_storage()._cdata for t in existing}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.known:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # modules are built in their dtype: Module.to() cannot swap fake parameters
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class LoraLinear(torch.nn.Module):
    """The LoRA the trainers attach (peft's computation: fp32 A and B over the frozen layer,
    the input cast to fp32), written out so it builds under fake tensors."""

    def __init__(self, base: torch.nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(torch.zeros(rank, base.in_features, dtype=torch.float32))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + ((x.float() @ self.lora_A.T) @ self.lora_B.T).to(x.dtype)


def add_lora(model: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and ".attn." in n and n.endswith(LORA_TARGETS)]
    for name in names:
        parent, child = name.rsplit(".", 1)
        owner = model.get_submodule(parent)
        setattr(owner, child, LoraLinear(getattr(owner, child), rank))
    return [p for n, p in model.named_parameters() if "lora_" in n]


def flux_transformer(config: dict | None = None, dtype: torch.dtype = torch.bfloat16):
    from diffusers import FluxTransformer2DModel
    with default_dtype(dtype):
        return FluxTransformer2DModel(**(config or FLUX_DEV)).requires_grad_(False)


def image_tokens(resolution: int, patch: int = 16) -> int:
    """FLUX's packed image tokens: an 8x VAE, then 2x2 patches."""
    return (resolution // patch) ** 2


def flux_inputs(model, batch: int, resolution: int, text: int, dtype: torch.dtype) -> dict:
    c = model.config
    tokens = image_tokens(resolution)
    inputs = dict(hidden_states=torch.randn(batch, tokens, c.in_channels, dtype=dtype),
                  encoder_hidden_states=torch.randn(batch, text, c.joint_attention_dim, dtype=dtype),
                  pooled_projections=torch.randn(batch, c.pooled_projection_dim, dtype=dtype),
                  timestep=torch.rand(batch), img_ids=torch.zeros(tokens, 3),
                  txt_ids=torch.zeros(text, 3), return_dict=False)
    if c.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def _measure(model: torch.nn.Module, step: Callable[[], Any], extra: Any = ()) -> int:
    existing = list(model.parameters()) + list(model.buffers()) + list(extra)
    with LiveBytes(existing) as live:
        step()
    return live.peak


def transformer_step_peak(*, batch: int, resolution: int, train: bool, rank: int = 16,
                          checkpointing: bool = True, text: int = TEXT_TOKENS,
                          config: dict | None = None, fake: bool = True,
                          dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Peak bytes of one transformer pass beyond its weights: a training forward + backward
    (the LoRA's gradients already allocated, as from the second micro-batch on) or a sampling
    forward without gradients. Also returns the LoRA's parameter count. ``fake=False`` runs
    the same on real tensors (small configs only)."""
    mode = torch._subclasses.fake_tensor.FakeTensorMode() if fake else contextlib.nullcontext()
    with mode:
        model = flux_transformer(config, dtype)
        lora = add_lora(model, rank)
        for p in lora:
            p.grad = torch.zeros_like(p)
        if train and checkpointing:
            model.enable_gradient_checkpointing()
        model.train(train)

        def step() -> None:
            inputs = flux_inputs(model, batch, resolution, text, dtype)
            if train:
                out = model(**inputs)[0]
                out.float().square().mean().backward()
            else:
                with torch.no_grad():
                    model(**inputs)

        peak = _measure(model, step, [p.grad for p in lora])
    return {"peak": peak, "lora_params": sum(p.numel() for p in lora)}


def vae_decode_peak(*, batch: int, resolution: int) -> int:
    """Peak bytes of decoding ``batch`` latents to images (bf16 VAE, no gradients)."""
    from diffusers import AutoencoderKL
    with torch._subclasses.fake_tensor.FakeTensorMode():
        with default_dtype(torch.bfloat16):
            vae = AutoencoderKL(**FLUX_VAE).eval()
        latent = resolution // 8

        def step() -> None:
            with torch.no_grad():
                z = torch.randn(batch, 16, latent, latent, dtype=torch.bfloat16)
                vae.decode(z, return_dict=False)[0].float()
        return _measure(vae, step)


def sciscore_peak(*, batch: int, dtype: torch.dtype = torch.float16) -> int:
    """Peak bytes of scoring ``batch`` images and their prompts with a CLIP-H (224 px)."""
    from transformers import CLIPConfig, CLIPModel
    with torch._subclasses.fake_tensor.FakeTensorMode():
        with default_dtype(dtype):
            model = CLIPModel(CLIPConfig(**CLIP_H)).eval()

        def step() -> None:
            with torch.no_grad():
                pixels = torch.randn(batch, 3, 224, 224, dtype=dtype)
                ids = torch.zeros(batch, 77, dtype=torch.long)
                model(input_ids=ids, pixel_values=pixels)
        return _measure(model, step)


def gdino_peak(*, height: int = 800, width: int = 800) -> int:
    """Peak bytes of one GroundingDINO-tiny detection (fp32, one image at the processor's
    800 px shortest side, a short prompt). Its deformable attention builds tensors outside
    the fake mode, so this one runs for real on the CPU (random weights, 0.6 GiB): the same
    count on real tensors."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()

    def step() -> None:
        with torch.no_grad():
            model(pixel_values=torch.randn(1, 3, height, width),
                  input_ids=torch.zeros(1, 8, dtype=torch.long),
                  attention_mask=torch.ones(1, 8, dtype=torch.long))
    return _measure(model, step)


def model_bytes(build: Callable[[], torch.nn.Module], bytes_per_param: int) -> int:
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters()) * bytes_per_param


def sciscore_weight_bytes(bytes_per_param: int = 2) -> int:
    from transformers import CLIPConfig, CLIPModel
    return model_bytes(lambda: CLIPModel(CLIPConfig(**CLIP_H)), bytes_per_param)


def gdino_weight_bytes() -> int:
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
    return model_bytes(lambda: GroundingDinoForObjectDetection(GroundingDinoConfig()), 4)


def vae_weight_bytes() -> int:
    from diffusers import AutoencoderKL
    return model_bytes(lambda: AutoencoderKL(**FLUX_VAE), 2)


def linear_shapes(config: dict | None = None) -> tuple[Counter, int]:
    """The transformer's linear layer shapes (out, in) with their counts, and the bytes of
    every other parameter in bf16."""
    with torch.device("meta"):
        model = flux_transformer(config)
    shapes = Counter(tuple(m.weight.shape) for m in model.modules()
                     if isinstance(m, torch.nn.Linear))
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    rest = sum(p.numel() * 2 for p in model.parameters() if id(p) not in linear)
    biases = sum(m.bias.numel() * 2 for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m.bias is not None)
    return shapes, rest - biases


def quantized_layer_bytes(shape: tuple[int, int], base: str) -> int:
    """Bytes one bf16 linear layer of ``shape`` holds (weight with its scales, and bias) once
    the trainers quantize it to ``base``: a real layer, quantized by the trainers' code."""
    from science_t2i.training.flux.quantize import quantize_transformer, weight_bytes
    out_features, in_features = shape
    layer = torch.nn.Linear(in_features, out_features, dtype=torch.bfloat16).requires_grad_(False)
    holder = torch.nn.Sequential(layer)
    if base != "bf16":
        quantize_transformer(holder, base)
    return weight_bytes(holder)


def transformer_weight_bytes(base: str, config: dict | None = None) -> dict[str, Any]:
    shapes, rest = linear_shapes(config)
    linear = {shape: quantized_layer_bytes(shape, base) for shape in shapes}
    total = rest + sum(linear[s] * n for s, n in shapes.items())
    params = sum(o * i for (o, i), n in shapes.items() for _ in range(n))
    largest = max(shapes, key=lambda s: s[0] * s[1])
    return {"bytes": total, "linear_params": params,
            "bytes_per_linear_weight": (total - rest) / params,
            "largest_linear_bf16": largest[0] * largest[1] * 2}
