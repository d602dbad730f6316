"""Optional rewriting backend: a local instruction-tuned causal LM from models/LLM/<name>.

The model directory is a transformers causal LM (config.json, *.safetensors, tokenizer files),
e.g. a downloaded Qwen2.5-1.5B-Instruct. It runs greedily with a fixed instruction (below). Its
answer is accepted only if it is one non-empty sentence of reasonable length that names the
subject; otherwise the rule-based rewrite is used, so the LLM can only improve wording, never
break a graph.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from . import _comfy, hub
from .errors import ScienceT2IError

log = logging.getLogger("science_t2i")

# The fixed instructions. {task}, {principle}, {consequence} come from the task knowledge.
INSTRUCTIONS = {
    "explicit": (
        "You rewrite text-to-image prompts for scientific realism. The prompt below implies a "
        "scientific phenomenon ({task}: {principle}). Write ONE sentence that describes only "
        "what is visibly true in the picture ({consequence}), naming the subject '{subject}' "
        "and keeping the scene. Answer with the sentence only."),
    "superficial": (
        "You rewrite text-to-image prompts. The prompt below implies a scientific phenomenon "
        "({task}: {principle}). Write ONE sentence that describes the naive, scientifically "
        "wrong picture a careless illustrator would draw, taking the words literally and "
        "ignoring the phenomenon, naming the subject '{subject}'. Answer with the sentence only."),
}
MAX_NEW_TOKENS = 64
MIN_WORDS, MAX_WORDS = 3, 60

_cache: dict[str, tuple[Any, Any]] = {}
_handles: dict[str, Any] = {}  # ComfyUI ModelPatcher (or standalone holder) per model
_lock = threading.Lock()


def list_llms() -> list[str]:
    return _comfy.list_models("LLM", extensions=(), include_dirs=True)


def resolve_llm(name: str) -> Path:
    path = _comfy.resolve_model("LLM", name)
    if path is None or not (path / "config.json").is_file():
        where = _comfy.default_folder("LLM")
        example = hub.download_command("Qwen/Qwen2.5-1.5B-Instruct",
                                       where / "Qwen2.5-1.5B-Instruct")
        raise ScienceT2IError(
            f"LLM {name!r} not found: expected a transformers model directory with "
            f"config.json in {where}. Download an instruction-tuned causal LM there (e.g. "
            f"`{example}`) or use the 'rules' backend.")
    return path


def load_llm(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a local causal LM, loaded once per directory, offline."""
    path = resolve_llm(name)
    key = str(path.resolve())
    with _lock:
        if key not in _cache:
            from transformers import AutoModelForCausalLM, AutoTokenizer
            try:
                tok = AutoTokenizer.from_pretrained(key, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(key, local_files_only=True)
            except Exception as exc:
                raise ScienceT2IError(
                    f"cannot load the LLM in {path} ({type(exc).__name__}: {exc}); it must be a "
                    "complete transformers causal LM directory (config, weights, tokenizer).") \
                    from exc
            model.eval()
            # ComfyUI's model management loads it on demand and may offload it again
            _handles[key] = _comfy.wrap_model(model, _comfy.torch_device(),
                                              _comfy.offload_device())
            _cache[key] = (model, tok)
        return _cache[key]


def validate_sentence(text: str, subject: str = "") -> str | None:
    """The answer as one clean sentence, or None when it is not usable.

    Accepted: 3..60 words, mostly letters, a single sentence (no second sentence after a
    full stop), and, when given, the last word of the subject present (singular or plural).
    """
    if not text:
        return None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = re.sub(r"^(?:explicit|superficial|answer|sentence|rewrite|output)\s*(?:prompt)?\s*:"
                  r"\s*", "", line, flags=re.IGNORECASE).strip().strip("\"'` ")
    if not line:
        return None
    if re.search(r"[.!?]\s+\S", line):  # more than one sentence
        return None
    words = line.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    letters = sum(ch.isalpha() for ch in line)
    if letters < 0.7 * len(line.replace(" ", "")):
        return None
    if subject:
        head = subject.lower().split()[-1].rstrip("s")
        if head and head not in line.lower():
            return None
    line = line.rstrip(".!? ") + "."
    return line[0].upper() + line[1:]


def _chat_input(tok: Any, instruction: str, prompt: str) -> str:
    if getattr(tok, "chat_template", None):
        messages = [{"role": "system", "content": instruction},
                    {"role": "user", "content": prompt}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{instruction}\n\nPrompt: {prompt}\nSentence:"


def generate_rewrite(name: str, prompt: str, kind: str, *, task_name: str, principle: str,
                     consequence: str, subject: str) -> str | None:
    """One validated sentence from the LLM, or None (the caller falls back to the rules)."""
    import torch
    if kind not in INSTRUCTIONS:
        raise ScienceT2IError(f"unknown rewrite kind {kind!r}; use {sorted(INSTRUCTIONS)}.")
    model, tok = load_llm(name)
    handle = _handles[str(resolve_llm(name).resolve())]
    _comfy.load_to_device(handle)
    instruction = INSTRUCTIONS[kind].format(task=task_name, principle=principle,
                                            consequence=consequence, subject=subject)
    inputs = tok(_chat_input(tok, instruction, prompt), return_tensors="pt")
    inputs = {k: v.to(handle.load_device) for k, v in inputs.items()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             pad_token_id=pad)
    text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    sentence = validate_sentence(text, subject)
    if sentence is None:
        log.info("LLM %s gave no usable %s sentence (%r); using the rules", name, kind,
                 text[:120])
    return sentence
