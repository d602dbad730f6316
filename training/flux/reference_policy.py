"""The stage-2 reference policy without a second transformer, in two designs:

- ``model.sft_start=merge`` (pack): an SFT LoRA merged into the frozen weights
  (``merge_lora_into_weights``), a new LoRA trained on top and switched off for the reference
  (``adapter_disabled``); the export stacks both LoRAs into one for the base model
  (``stack_loras``);
- ``model.sft_start=continue`` (reference implementation): the SFT LoRA itself keeps training
  (``continue_lora``), and the reference is a frozen second copy of the SFT adapter
  (``REFERENCE_ADAPTER``, switched in by ``adapter_active``): a LoRA's worth of memory where
  the reference implementation deep-copies the transformer.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from ...nodes.core import safetensors_metadata, save_safetensors_atomic
from ...nodes.errors import ScienceT2IError
from ...nodes.lora import DIFFUSERS_METADATA_KEY, folded_adapter_config, read_lora

REFERENCE_ADAPTER = "sft_reference"


@contextlib.contextmanager
def adapter_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """The reference policy: the same module with its LoRA adapters switched off (no copy),
    by diffusers' own switch (a walk over the modules: far below a forward's cost)."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


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
        if type(layer.weight) is not torch.nn.Parameter or not layer.weight.is_floating_point() \
                or layer.weight.dtype.itemsize < 2:
            # int8 / nf4 tensors, or an fp8 file's weights: adding would requantize them
            raise ScienceT2IError(
                "model.sft_start=merge adds the SFT LoRA into the frozen weights, which are "
                "quantized or fp8 here: set model.sft_start=continue (the SFT LoRA trains on, "
                "a frozen copy is the reference).")
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


def write_stacked_lora(first: Any, second_file: str | Path, path: str | Path) -> Path:
    """One LoRA file for the base model: ``first`` (a LoraFile) stacked with the LoRA in
    ``second_file`` (``stack_loras``), written atomically at ``path`` with ``second_file``'s
    metadata and the adapter config of the stacked ranks."""
    second_file = Path(second_file)
    tensors, ranks = stack_loras(first, read_lora(second_file))
    metadata = safetensors_metadata(second_file)
    metadata[DIFFUSERS_METADATA_KEY] = folded_adapter_config(
        {m.removeprefix("transformer."): r for m, r in ranks.items()})
    metadata["science_t2i.stacked_on_sft_lora"] = str(first.path.name)
    save_safetensors_atomic(tensors, path, metadata=metadata)
    return Path(path)


def _adapter_config(lora: Any) -> Any:
    """A LoraConfig with the file's layers and ranks at scale 1 (alpha = r): the file's
    alpha / rank is folded into B by ``_adapter_state``."""
    from collections import Counter

    from peft import LoraConfig
    modules = [m.removeprefix("transformer.") for m in lora.modules]
    ranks = {m.removeprefix("transformer."): r for m, r in lora.ranks.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: r for m, r in ranks.items() if r != rank}
    return LoraConfig(r=rank, lora_alpha=rank, rank_pattern=pattern, alpha_pattern=dict(pattern),
                      target_modules=modules, init_lora_weights=False)


def _adapter_state(lora: Any) -> dict[str, torch.Tensor]:
    state = {}
    for module in lora.modules:
        name = module.removeprefix("transformer.")
        A = lora.tensors[f"{module}.lora_A.weight"].float()
        B = lora.tensors[f"{module}.lora_B.weight"].float()
        state[f"{name}.lora_A.weight"] = A
        state[f"{name}.lora_B.weight"] = B * (lora.alphas[module] / A.shape[0])
    return state


def continue_lora(transformer: torch.nn.Module, lora: Any,
                  dtype: str = "fp32") -> list[torch.nn.Parameter]:
    """Attach a LoRA file twice: as the trained adapter ("default", initialised to the file)
    and as the frozen reference (``REFERENCE_ADAPTER``); returns the trained parameters.
    ``dtype`` as in ``model.attach_lora``."""
    from peft.utils import set_peft_model_state_dict
    config = _adapter_config(lora)
    state = _adapter_state(lora)
    for name in (REFERENCE_ADAPTER, "default"):
        try:
            with warnings.catch_warnings():   # peft warns about a second adapter: wanted here
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                transformer.add_adapter(config, adapter_name=name)
        except ValueError as exc:
            raise ScienceT2IError(f"the SFT LoRA {getattr(lora, 'path', '')} does not fit this "
                                  f"FLUX transformer ({exc}); was it trained on another "
                                  "model?") from exc
        result = set_peft_model_state_dict(transformer, state, adapter_name=name)
        missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k
                   and "lora_" in k]
        if missing:
            raise ScienceT2IError(f"the SFT LoRA lacks tensors for {missing[:2]}...")
    transformer.set_adapter("default")    # trainable; the reference copy stays frozen
    for name, p in transformer.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            p.requires_grad_(False)
            p.data = p.data.float() if dtype == "fp32" else p.data
    params = [p for p in transformer.parameters() if p.requires_grad]
    if dtype == "fp32":
        for p in params:
            p.data = p.data.float()
    return params


@contextlib.contextmanager
def adapter_active(transformer: torch.nn.Module, name: str) -> Iterator[None]:
    """Run with adapter ``name`` active in place of the trained "default" one, by diffusers'
    ``set_adapter`` (inside inference mode: "default" is switched back, trainable, on exit)."""
    transformer.set_adapter(name)
    try:
        yield
    finally:
        transformer.set_adapter("default")
