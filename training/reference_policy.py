"""The stage-2 reference policy without a second transformer: the trained LoRA switched off
(``adapter_disabled``), an SFT LoRA merged into the frozen weights so that "switched off" is
the SFT model (``merge_lora_into_weights``), and the export that stacks both LoRAs into one
for the base model (``stack_loras``)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..nodes.errors import ScienceT2IError


def lora_layers(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's PEFT adapter layers (found once: walking every module per step costs)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapter_disabled(transformer: torch.nn.Module,
                     layers: list[torch.nn.Module] | None = None) -> Iterator[None]:
    """The reference policy: the same module with its LoRA adapters switched off (no copy).
    ``layers`` (from :func:`lora_layers`) saves searching the module tree each call."""
    layers = lora_layers(transformer) if layers is None else layers
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merge_lora_into_weights(transformer: torch.nn.Module, lora: Any) -> int:
    """Add a LoRA file's weight changes to the transformer's linear weights in place (before
    any adapter is attached); returns the number of layers changed."""
    changed = 0
    for module in lora.modules:
        try:
            layer = transformer.get_submodule(module.removeprefix("transformer."))
        except AttributeError:
            raise ScienceT2IError(f"the SFT LoRA has layer {module!r}, which this FLUX "
                                  "transformer does not; was it trained on another model?")
        with torch.no_grad():
            layer.weight += lora.delta(module).to(layer.weight.device, layer.weight.dtype)
        changed += 1
    return changed


def stack_loras(first: Any, second: Any) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One LoRA equal to the sum of two: ranks concatenated, each scale folded into B.
    Keys as in ``LoraFile.tensors`` (``transformer.<module>.lora_A.weight``)."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module in dict.fromkeys(list(first.modules) + list(second.modules)):
        As, Bs = [], []
        for lora in (first, second):
            if module in lora.ranks:
                A = lora.tensors[f"{module}.lora_A.weight"].float()
                B = lora.tensors[f"{module}.lora_B.weight"].float()
                As.append(A)
                Bs.append(B * (lora.alphas[module] / A.shape[0]))
        tensors[f"{module}.lora_A.weight"] = torch.cat(As, 0).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(Bs, 1).contiguous()
        ranks[module] = tensors[f"{module}.lora_A.weight"].shape[0]
    return tensors, ranks
