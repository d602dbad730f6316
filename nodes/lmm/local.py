"""A transformers model run in this process: the one local loader of the pack.

Image-text-to-text models (Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision, Idefics3 /
SmolVLM, ...) get their processor's chat template with the images in place; a causal LM gets
its tokenizer's template (or plain text). Every caller (the judges, ImgCoder, the prompt
rewriter) shares one loaded copy per model, dtype and device, wrapped for ComfyUI's model
management (loaded on demand, offloaded when others need the memory). Decoding is greedy;
ComfyUI's Cancel is checked at every token.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .. import _comfy
from ..core import hub
from ..errors import ScienceT2IError
from .base import EXAMPLE_VLM, Endpoint, LMMBackend, Part, check_parts, rgb
from .models import not_found, resolve_local_model

log = logging.getLogger("science_t2i")


@dataclasses.dataclass
class _Loaded:
    model: Any
    processor: Any          # AutoProcessor (multimodal) or AutoTokenizer (text-only)
    handle: Any             # ComfyUI ModelPatcher, or the standalone holder
    multimodal: bool
    model_type: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_cache: dict[tuple[str, str], _Loaded] = {}

_lock = threading.Lock()


def _model_dtype(device: Any, requested: str) -> Any:
    import torch

    # VLMs are released in bf16 and some (Qwen2-VL) overflow in fp16: prefer bf16 on CUDA
    if requested == "auto" and getattr(device, "type", "") == "cuda" \
            and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return _comfy.pick_dtype(device, requested)


def _load(source: str, local: bool, device: Any, dtype: Any) -> _Loaded:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    offline = hub.hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": local or offline}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:
        if not local and offline:
            raise not_found(source) from exc
        if not local:
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            target = _comfy.default_folder("vlm") / source.split("/")[-1]
            raise ScienceT2IError(
                f"cannot fetch the judge model {source!r} from the Hugging Face Hub "
                f"({type(exc).__name__}: {reason}); check the repo id and the network, or "
                f"download it with `{hub.download_command(source, target)}`.") from exc
        raise ScienceT2IError(f"cannot read the config of the judge model in {source} "
                              f"({type(exc).__name__}: {exc}); download the model again.") \
            from exc
    model_type = getattr(config, "model_type", "") or ""
    multimodal = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    try:
        if multimodal:
            from transformers import AutoModelForImageTextToText, AutoProcessor
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **kwargs)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer
            processor = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except Exception as exc:
        raise ScienceT2IError(
            f"cannot load the judge model {source} (model_type {model_type!r}; "
            f"{type(exc).__name__}: {exc}). It must be a complete transformers "
            "image-text-to-text model (config, weights, processor and tokenizer files) such "
            f"as {EXAMPLE_VLM}, or a causal LM for text-only use.") from exc
    model.eval().requires_grad_(False)
    # ComfyUI's model management loads it on demand and may offload it again
    handle = _comfy.wrap_model(model, device, _comfy.offload_device())
    return _Loaded(model, processor, handle, multimodal, model_type)


def _interrupt_criteria() -> Any:
    """A stopping criterion that only checks ComfyUI's Cancel button at each new token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _CheckInterrupt(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            _comfy.check_interrupt()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_CheckInterrupt()])


class LocalBackend(LMMBackend):
    """A transformers model run in this process, greedily.

    ``name_or_path``: a folder under models/vlm, a directory path, or a Hub id (downloaded
    into the Hugging Face cache when online). Loaded once per directory and dtype, on first
    use, and managed by ComfyUI's model management (offloaded when others need the memory).
    """

    def __init__(self, name_or_path: str, *, device: Any = None, dtype: str = "auto"):
        import torch
        self.source, self.is_local, ident = resolve_local_model(str(name_or_path))
        self.name = f"local:{ident}"
        self.device = torch.device(device) if device is not None else _comfy.torch_device()
        self.dtype = _model_dtype(self.device, dtype)

    @classmethod
    def from_spec(cls, name: str, endpoint: Endpoint) -> "LocalBackend":
        """``local:NAME``: runs here, so the endpoint settings do not apply."""
        return cls(name)

    def load(self) -> _Loaded:
        """The loaded model (cached per resolved path, dtype and device)."""
        key = (self.source, f"{self.dtype}@{self.device}")
        with _lock:
            if key not in _cache:
                _cache[key] = _load(self.source, self.is_local, self.device, self.dtype)
            return _cache[key]

    @property
    def multimodal(self) -> bool:
        return self.load().multimodal

    def generate(self, parts: Sequence[Part], *, system: str | None = None,
                 max_new_tokens: int = 512) -> str:
        import torch
        parts = check_parts(parts)
        loaded = self.load()
        if loaded.multimodal:
            inputs, tokenizer = self._multimodal_inputs(loaded, parts, system)
        else:
            inputs, tokenizer = self._text_inputs(loaded, parts, system)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        max_new_tokens = self._fit_context(loaded, inputs["input_ids"].shape[1],
                                           int(max_new_tokens))
        with loaded.lock:
            _comfy.check_interrupt()
            _comfy.load_to_device(loaded.handle)
            device = loaded.handle.load_device
            inputs = inputs.to(device)
            inputs = {k: v.to(self.dtype) if torch.is_tensor(v) and v.is_floating_point()
                      else v for k, v in inputs.items()}
            with torch.inference_mode():
                out = loaded.model.generate(
                    **inputs, max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                    pad_token_id=pad, stopping_criteria=_interrupt_criteria())
        new = out[0, inputs["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True).strip()

    def _fit_context(self, loaded: _Loaded, prompt_tokens: int, wanted: int) -> int:
        """New tokens that fit the model's context window: fewer than asked (logged) when the
        prompt leaves less room, an error when the prompt alone fills it."""
        config = loaded.model.config
        text_config = getattr(config, "get_text_config", lambda: config)()
        limit = next((getattr(c, k) for c in (text_config, config)
                      for k in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(c, k, None), int)), None)
        if limit is None or prompt_tokens + wanted <= limit:
            return wanted
        room = limit - prompt_tokens
        if room < 1:
            raise ScienceT2IError(
                f"the prompt is {prompt_tokens} tokens, and {self.source} reads at most {limit}; "
                "shorten the text or use a model with a longer context.")
        log.info("judge %s: %d new tokens asked but the context leaves %d; generating %d",
                 self.name, wanted, room, room)
        return room

    def _multimodal_inputs(self, loaded: _Loaded, parts: list[Part],
                           system: str | None) -> tuple[Any, Any]:
        processor = loaded.processor
        if not getattr(processor, "chat_template", None):
            raise ScienceT2IError(
                f"the judge model {self.source} has no chat template (chat_template.jinja or "
                "chat_template.json beside its processor files), so no prompt can be built "
                "for it; use an instruction-tuned release of the model.")
        content = [{"type": "text", "text": p} if isinstance(p, str)
                   else {"type": "image", "image": rgb(p)} for p in parts]
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": content})
        try:
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt")
        except Exception as exc:
            raise ScienceT2IError(
                f"the processor of the judge model {self.source} could not build the prompt "
                f"({type(exc).__name__}: {exc}); check that the model directory is complete "
                "(processor and tokenizer files).") from exc
        tokenizer = getattr(processor, "tokenizer", processor)
        return inputs, tokenizer

    def _text_inputs(self, loaded: _Loaded, parts: list[Part],
                     system: str | None) -> tuple[Any, Any]:
        if any(isinstance(p, Image.Image) for p in parts):
            raise ScienceT2IError(
                f"the judge model {self.source} is a text-only language model (model_type "
                f"{loaded.model_type!r}) and cannot look at images. Use an image-text-to-text "
                f"model (e.g. {EXAMPLE_VLM} in {_comfy.default_folder('vlm')}) or an "
                "OpenAI-compatible vision model for judging images.")
        tokenizer = loaded.processor
        text = "\n".join(parts)  # type: ignore[arg-type]
        if getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": text}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
            # the template already wrote the special tokens (BOS etc.)
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        else:  # a base model without a template: plain text
            prompt = f"{system}\n\n{text}\n" if system else f"{text}\n"
            inputs = tokenizer(prompt, return_tensors="pt")
        return inputs, tokenizer
