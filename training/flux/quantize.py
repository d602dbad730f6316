"""The frozen FLUX base in 8 or 4 bits (``model.base``), through torchao.

- ``bf16``: the weights in the run's weight dtype (bf16 on CUDA, fp32 on CPU), as before;
- ``int8``: int8 weight-only (per-channel scales), computed in the activation dtype;
- ``fp8``: float8 (e4m3) weight-only, computed in the activation dtype;
- ``8bit``: ``fp8`` on GPUs with fp8 hardware (compute capability 8.9 or newer), ``int8``
  elsewhere; the choice is logged;
- ``nf4``: 4-bit NormalFloat with double-quantized scales (QLoRA), blocks of 64 weights.

Every ``nn.Linear`` of the transformer is quantized on the CPU after loading, before the
model moves to the GPU, so the GPU never holds the full-precision weights. The LoRA stays in
fp32 (or the weight dtype) on top and is saved exactly as over a full-precision base. The
same torchao code runs on the CPU (the tests) and on CUDA.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch

from ...nodes.errors import ScienceT2IError

log = logging.getLogger(__name__)

BASES = ("bf16", "8bit", "int8", "fp8", "nf4")
QUANTIZED_EXTRA = ('pip install "comfyui-science-t2i[quantized]" (from a checkout: pip install '
                   '-e ".[quantized]")')
NF4_BLOCK = 64
NF4_SCALER_BLOCK = 256


def has_fp8(device: torch.device) -> bool:
    """Whether ``device`` computes in fp8 natively (CUDA compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def resolve_base(base: str, device: torch.device) -> str:
    """The base precision to use: ``8bit`` becomes ``fp8`` or ``int8`` for this device;
    the others stay. Refuses an unknown name or a quantized base without torchao."""
    if base not in BASES:
        raise ScienceT2IError(f"model.base must be one of {', '.join(BASES)}; got {base!r}.")
    if base == "bf16":
        return base
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        raise ScienceT2IError(f"model.base={base} quantizes the frozen FLUX weights with torchao, "
                              f"which cannot be imported ({exc}): {QUANTIZED_EXTRA}, or set "
                              "model.base=bf16.") from None
    if base == "8bit":
        chosen = "fp8" if has_fp8(device) else "int8"
        log.info("model.base=8bit: %s on %s (%s)", chosen, device,
                 "fp8 hardware" if chosen == "fp8" else "no fp8 hardware")
        return chosen
    return base


def _quantizable(module: torch.nn.Module) -> bool:
    # every linear layer of FLUX.1 holds a multiple of 64 weights (nf4's block)
    w = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Linear) and type(w) is torch.nn.Parameter \
        and w.numel() % NF4_BLOCK == 0


def _to_nf4(linear: torch.nn.Linear) -> None:
    from torchao.quantization import to_nf4
    w = linear.weight.detach()
    # the scalers are double-quantized in blocks of 256; smaller layers (tiny test models)
    # use the largest block that divides their scaler count
    scaler_block = math.gcd(w.numel() // NF4_BLOCK, NF4_SCALER_BLOCK)
    linear.weight = torch.nn.Parameter(to_nf4(w, NF4_BLOCK, scaler_block), requires_grad=False)


def quantize_transformer(model: torch.nn.Module, base: str) -> int:
    """Quantize the transformer's linear layers in place (``base`` as ``resolve_base``
    returns it); returns how many layers were quantized."""
    if base == "bf16":
        return 0
    layers = [m for m in model.modules() if _quantizable(m)]
    if base == "nf4":
        for linear in layers:
            _to_nf4(linear)
    else:
        from torchao.quantization import (Float8WeightOnlyConfig, Int8WeightOnlyConfig,
                                          quantize_)
        config = Int8WeightOnlyConfig() if base == "int8" else Float8WeightOnlyConfig()
        chosen = set(map(id, layers))
        quantize_(model, config, filter_fn=lambda m, _name: id(m) in chosen)
    # peft wraps torchao weights in layers that cannot merge a LoRA into them, and warns so
    # at every layer; the trainers never merge into a quantized base (stage2 refuses it)
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
    log.info("FLUX base: %d linear layers quantized to %s", len(layers), base)
    return len(layers)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's parameters and buffers hold, quantized tensors counted by their inner
    data and scales."""
    def size(t: torch.Tensor) -> int:
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None and type(t) is not torch.Tensor and type(t) is not \
                torch.nn.Parameter:
            names, _ = inner()
            return sum(size(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += size(t)
    return total


def describe(model: Any, base: str) -> str:
    return f"FLUX transformer, base {base}: {weight_bytes(model) / 2 ** 30:.2f} GiB of weights"


# ----------------------------------------------------------------------------- fp8 files

class _Fp8Linear(torch.autograd.Function):
    """y = x W^T + b with W kept in fp8: cast up for the product, and again in the backward
    (only the fp8 weight is saved, not a full-precision copy)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return torch.nn.functional.linear(x, weight.to(x.dtype),
                                          None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None   # the frozen layer gets no gradient


class Fp8StorageLinear(torch.nn.Linear):
    """A frozen linear layer holding an fp8 file's weight as it is (its bias in the model's
    dtype), computed in the input's dtype on any device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8Linear.apply(x, self.weight, self.bias)


def keep_fp8_weights(model: torch.nn.Module) -> int:
    """Store back in fp8 every linear weight whose values are fp8 values (those an fp8 file
    held: loading cast them up exactly); returns how many layers."""
    n = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            w = module.weight.detach()
            fp8 = w.to(torch.float8_e4m3fn)
            if torch.equal(fp8.to(w.dtype), w):
                module.weight = torch.nn.Parameter(fp8, requires_grad=False)
                module.__class__ = Fp8StorageLinear
                n += 1
    return n

