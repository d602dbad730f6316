"""The multimodal judge's two backends: a local vision-language model, or an OpenAI-compatible
server.

Both take the same input, text and PIL images interleaved in order
(``["Image-1:", img_a, "Image-2:", img_b, "Prompt: ..."]``), and answer with the model's text,
deterministically by default (greedy decoding locally; temperature 0 and a fixed seed
remotely). ``backend_from_spec`` builds one from a short string:

- ``local:NAME``: a transformers image-text-to-text model (Qwen2-VL / Qwen2.5-VL / Qwen3-VL,
  LLaVA-OneVision, Idefics3 / SmolVLM, ...) in ``models/vlm/NAME``, at a directory path, or a
  Hugging Face Hub id. A plain causal LM directory also works, for text-only parts.
- ``openai:MODEL``: ``POST {base_url}/chat/completions`` of any OpenAI-compatible server
  (OpenAI, vLLM, llama.cpp, ``transformers serve``), with the standard library only.
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from . import _comfy, hub
from .errors import ScienceT2IError

log = logging.getLogger("science_t2i")

Part = str | Image.Image  # text and images, interleaved in the order the model sees them

# what the "not found" messages suggest downloading
EXAMPLE_VLM = "Qwen/Qwen2.5-VL-3B-Instruct"


class JudgeError(ScienceT2IError):
    """A judge call that failed after its retries (timeout, HTTP error, unusable reply).

    ``transient``: whether the last failure was of the kind that may pass by itself
    (timeout, connection error, HTTP 429 or 5xx), so that trying later may succeed.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class JudgeBackend:
    """What the judge engine talks to. ``name`` is a stable id used in cache keys."""

    name: str = "judge"

    def generate(self, parts: Sequence[Part], *, system: str | None = None,
                 max_new_tokens: int = 512) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_parts(parts: Sequence[Part]) -> list[Part]:
    if isinstance(parts, (str, Image.Image)):
        parts = [parts]
    parts = list(parts)
    if not parts:
        raise ScienceT2IError("the judge got no input: pass text and/or images as parts.")
    for i, part in enumerate(parts):
        if not isinstance(part, (str, Image.Image)):
            raise ScienceT2IError(
                f"judge input part {i} is a {type(part).__name__}; parts must be strings or "
                "PIL images (convert a ComfyUI IMAGE tensor with nodes.images.to_pil).")
    return parts


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


# ============================================================================ local backend

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


def list_vlms() -> list[str]:
    """Model directories under models/vlm (names for ``local:NAME``)."""
    return _comfy.list_models("vlm", extensions=(), include_dirs=True)


def list_local_models() -> list[str]:
    """Every ``local:`` name: models/vlm's folders, then models/LLM's as ``LLM/<folder>``
    (text only, for ImgCoder)."""
    from .prompt_llm import list_llms
    return list_vlms() + [f"LLM/{name}" for name in list_llms()]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) \
        and "\\" not in name and ":" not in name


def _not_found(name: str) -> ScienceT2IError:
    where = _comfy.default_folder("vlm")
    if _looks_like_hub_id(name):
        command = hub.download_command(name, where / name.split("/")[-1])
        return ScienceT2IError(
            f"judge model {name!r} is neither in {where} nor in the Hugging Face cache, and "
            "offline mode (HF_HUB_OFFLINE) is on, so it cannot be downloaded. Download it "
            f"where there is internet access with:\n  {command}\nthen use "
            f"'local:{name.split('/')[-1]}' (or turn offline mode off).")
    command = hub.download_command(EXAMPLE_VLM, where / EXAMPLE_VLM.split("/")[-1])
    return ScienceT2IError(
        f"judge model {name!r} not found: expected a transformers model directory with "
        f"config.json in {where} (or a directory path, or a Hugging Face Hub id such as "
        f"{EXAMPLE_VLM}). Download a vision-language model there, e.g.:\n  {command}\n"
        "or use an OpenAI-compatible server ('openai:MODEL' with a base URL).")


def resolve_vlm(name: str) -> tuple[str, bool, str]:
    """(what from_pretrained gets, whether it is a local directory, the stable id) for
    ``name``: a folder under models/vlm (or models/LLM, also as ``LLM/<folder>``), a
    directory path, or a Hub id (found in models/vlm
    under its repository name, in the Hub cache, or downloaded when online)."""
    name = name.strip()
    if not name:
        raise ScienceT2IError("no judge model named: give a folder name under "
                              f"{_comfy.default_folder('vlm')}, a directory or a Hub id.")
    if name.startswith("LLM/"):  # a text-only model of models/LLM (ImgCoder)
        path = _comfy.resolve_model("LLM", name[4:])
        if path is None:
            raise ScienceT2IError(f"{name[4:]!r} is not a folder in "
                                  f"{_comfy.default_folder('LLM')}.")
    else:  # models/vlm first, then the text-only models of models/LLM
        path = _comfy.resolve_model("vlm", name) or _comfy.resolve_model("LLM", name)
    if path is None and _looks_like_hub_id(name):  # where the download command puts it
        candidate = _comfy.default_folder("vlm") / name.split("/")[-1]
        path = candidate if candidate.is_dir() else None
    if path is not None:
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ScienceT2IError(
                f"{path} is not a transformers model directory (no config.json): a judge "
                "model is a folder with config.json, the weights (*.safetensors) and the "
                "processor/tokenizer files, e.g. a download of " + EXAMPLE_VLM + ".")
        return str(path.resolve()), True, path.resolve().name
    if not _looks_like_hub_id(name):
        raise _not_found(name)
    if hub.hub_offline() and not _in_hub_cache(name):
        raise _not_found(name)
    return name, False, name


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # an id the hub library refuses (HFValidationError): not cached
        return False


def _judge_dtype(device: Any, requested: str) -> Any:
    import torch
    # VLMs are released in bf16 and some (Qwen2-VL) overflow in fp16: prefer bf16 on CUDA
    if requested == "auto" and getattr(device, "type", "") == "cuda" \
            and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return _comfy.pick_dtype(device, requested)


def _load(source: str, local: bool, device: Any, dtype: Any) -> _Loaded:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    offline = hub.hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": local or offline}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:
        if not local and offline:
            raise _not_found(source) from exc
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


class LocalBackend(JudgeBackend):
    """A transformers model run in this process, greedily.

    ``name_or_path``: a folder under models/vlm, a directory path, or a Hub id (downloaded
    into the Hugging Face cache when online). Loaded once per directory and dtype, on first
    use, and managed by ComfyUI's model management (offloaded when others need the memory).
    """

    def __init__(self, name_or_path: str, *, device: Any = None, dtype: str = "auto"):
        import torch
        self.source, self.is_local, ident = resolve_vlm(str(name_or_path))
        self.name = f"local:{ident}"
        self.device = torch.device(device) if device is not None else _comfy.torch_device()
        self.dtype = _judge_dtype(self.device, dtype)

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
        parts = _check_parts(parts)
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
                   else {"type": "image", "image": _rgb(p)} for p in parts]
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


# ============================================================================ OpenAI backend

def image_data_url(img: Image.Image, max_side: int | None = 1024) -> str:
    """A PNG data URL of ``img``, downscaled (LANCZOS) so its long side is <= ``max_side``."""
    img = _rgb(img)
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Failure(Exception):
    """One failed try: what to say, and whether trying again may help."""

    def __init__(self, what: str, transient: bool, hint: str, retry_after: float | None = None):
        super().__init__(what)
        self.what, self.transient, self.hint, self.retry_after = what, transient, hint, \
            retry_after


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


class OpenAIBackend(JudgeBackend):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url``: the API root, e.g. ``https://api.openai.com/v1`` or
    ``http://127.0.0.1:8000/v1`` (vLLM, llama.cpp, ``transformers serve``). The key is read
    from the environment variable ``api_key_env`` at each call; when it is unset no
    Authorization header is sent (local servers need none). ``retries``: how many times a
    call that timed out, could not connect or got HTTP 429/5xx is repeated, after waiting
    ``backoff * 2**k`` seconds (or the server's Retry-After, up to ``max_backoff``).
    """

    def __init__(self, model: str, base_url: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120, retries: int = 3, temperature: float = 0.0,
                 seed: int | None = 0, max_image_side: int | None = 1024,
                 backoff: float = 1.0, max_backoff: float = 30.0):
        if not model or not str(model).strip():
            raise ScienceT2IError("no model named for the OpenAI-compatible judge: give the "
                                  "model id the server serves (e.g. 'openai:gpt-4o').")
        base = str(base_url or "").strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ScienceT2IError(
                f"judge base URL {base_url!r} is not an http(s) URL; give the API root, e.g. "
                "https://api.openai.com/v1 or http://127.0.0.1:8000/v1 for a local server.")
        if retries < 0 or timeout <= 0:
            raise ScienceT2IError(f"retries must be >= 0 and timeout > 0 (got retries={retries}"
                                  f", timeout={timeout}).")
        self.model = str(model).strip()
        self.base_url = base
        self.url = base + "/chat/completions"
        self.name = f"openai:{self.model}@{base}"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.temperature = float(temperature)
        self.seed = seed
        self.max_image_side = max_image_side
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep: Callable[[float], None] = time.sleep

    # -------------------------------------------------------------- request
    def request_body(self, parts: Sequence[Part], *, system: str | None = None,
                     max_new_tokens: int = 512) -> dict:
        content = [{"type": "text", "text": p} if isinstance(p, str) else
                   {"type": "image_url",
                    "image_url": {"url": image_data_url(p, self.max_image_side)}}
                   for p in _check_parts(parts)]
        messages: list[dict] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": self.temperature,
                                "max_tokens": int(max_new_tokens)}
        if self.seed is not None:
            body["seed"] = int(self.seed)
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "").strip() if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, data: bytes) -> bytes:
        req = urllib.request.Request(self.url, data=data, headers=self._headers(),
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read().decode("utf-8", "replace")
            except OSError:  # the body could not be read either
                body = ""
            code = exc.code
            what = f"HTTP {code} {exc.reason}: {body[:300]!r}"
            if code == 429:
                raise _Failure(what, True, "the server is rate limiting: wait, lower the "
                               "request rate, or check the account's quota.",
                               _retry_after(exc.headers)) from exc
            if code >= 500:
                raise _Failure(what, True, "the server failed or is overloaded: check its "
                               "log and that it has finished loading the model.",
                               _retry_after(exc.headers)) from exc
            if code in (401, 403):
                hint = (f"check the API key in the environment variable {self.api_key_env}"
                        " (it is sent as a Bearer token when set).")
            elif code == 404:
                hint = (f"check the base URL ({self.base_url}: usually ending in /v1) and "
                        f"that the server serves the model {self.model!r}.")
            else:
                hint = (f"check the model name {self.model!r} (the one the server serves) "
                        "and that the server accepts images and these parameters.")
            raise _Failure(what, False, hint) from exc
        except TimeoutError as exc:
            raise _Failure(f"no answer within {self.timeout:g} s (timeout)", True,
                           "check that the server is up and not overloaded, or raise the "
                           "timeout.") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _Failure(f"no connection within {self.timeout:g} s (timeout)", True,
                               "check that the server is up and the base URL.") from exc
            raise _Failure(f"cannot connect ({reason})", True,
                           f"check that the server is running at {self.base_url}.") from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _Failure(f"connection failed ({type(exc).__name__}: {exc})", True,
                           f"check that the server at {self.base_url} is healthy.") from exc

    def _parse(self, raw: bytes) -> str:
        shown = raw[:300].decode("utf-8", "replace")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise JudgeError(
                f"the judge server at {self.url} (model {self.model}) answered with something "
                f"that is not JSON: {shown!r}; check that the base URL points at an "
                "OpenAI-compatible API root (usually ending in /v1).") from exc
        content = None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            pass
        if isinstance(content, list):  # content given as parts by some servers
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        if not isinstance(content, str):
            raise JudgeError(
                f"the reply of the judge server at {self.url} (model {self.model}) has no "
                f"choices[0].message.content; it sent: {shown!r}. Check that the model is a "
                "chat model and that the server speaks the OpenAI chat-completions API.")
        return content.strip()

    def generate(self, parts: Sequence[Part], *, system: str | None = None,
                 max_new_tokens: int = 512) -> str:
        data = json.dumps(self.request_body(parts, system=system,
                                            max_new_tokens=max_new_tokens)).encode("utf-8")
        tries = self.retries + 1
        for attempt in range(1, tries + 1):
            _comfy.check_interrupt()
            try:
                raw = self._post_once(data)
            except _Failure as failure:
                if failure.transient and attempt < tries:
                    delay = failure.retry_after if failure.retry_after is not None \
                        else self.backoff * 2 ** (attempt - 1)
                    delay = min(delay, self.max_backoff)
                    log.warning("judge call to %s (model %s) failed (%s); try %d of %d again "
                                "in %.1f s", self.url, self.model, failure.what, attempt + 1,
                                tries, delay)
                    self._sleep(delay)
                    continue
                count = f"after {attempt} tries" if attempt > 1 else "on the first try"
                raise JudgeError(
                    f"the judge call to {self.url} (model {self.model}) failed {count}: "
                    f"{failure.what}. What to check: {failure.hint}",
                    transient=failure.transient) from failure
            return self._parse(raw)
        raise AssertionError("unreachable")  # pragma: no cover


# ============================================================================ factory

def backend_from_spec(spec: str, *, base_url: str | None = None,
                      api_key_env: str = "OPENAI_API_KEY", timeout: float = 120,
                      retries: int = 3) -> JudgeBackend:
    """``local:NAME`` -> LocalBackend(NAME); ``openai:MODEL`` -> OpenAIBackend(MODEL, base_url)."""
    kind, sep, rest = str(spec or "").strip().partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if sep and kind == "local" and rest:
        return LocalBackend(rest)
    if sep and kind == "openai" and rest:
        if not base_url or not str(base_url).strip():
            raise ScienceT2IError(
                f"the judge {spec!r} needs a base URL: the API root of an OpenAI-compatible "
                "server, e.g. https://api.openai.com/v1, or http://127.0.0.1:8000/v1 for a "
                "local vLLM / llama.cpp / `transformers serve` server.")
        return OpenAIBackend(rest, base_url, api_key_env=api_key_env, timeout=timeout,
                             retries=retries)
    raise ScienceT2IError(
        f"unknown judge {spec!r}: use 'local:NAME' (a folder under "
        f"{_comfy.default_folder('vlm')}, a directory path or a Hub id such as "
        f"{EXAMPLE_VLM}) or 'openai:MODEL' with a base URL.")
