"""Optional rewriting backend: a local instruction-tuned causal LM from models/LLM/<name>.

The model directory is a transformers causal LM (config.json, *.safetensors, tokenizer files),
e.g. a downloaded Qwen2.5-1.5B-Instruct, run by the pack's one local loader
(``lmm.LocalBackend``) greedily, with a fixed instruction (below) as the system turn. Its
answer is accepted only if it is one non-empty sentence of reasonable length that names the
subject; otherwise the rule-based rewrite is used, so the LLM can only improve wording, never
break a graph.
"""
from __future__ import annotations

import logging
import re

from .. import _comfy
from ..core import hub
from ..errors import ScienceT2IError
from ..lmm import LocalBackend

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


def rewriter(name: str) -> LocalBackend:
    """The backend of the LLM ``name`` in models/LLM (a clear error when it is not there)."""
    path = _comfy.resolve_model("LLM", name)
    if path is None or not (path / "config.json").is_file():
        where = _comfy.default_folder("LLM")
        example = hub.download_command("Qwen/Qwen2.5-1.5B-Instruct",
                                       where / "Qwen2.5-1.5B-Instruct")
        raise ScienceT2IError(
            f"LLM {name!r} not found: expected a transformers model directory with "
            f"config.json in {where}. Download an instruction-tuned causal LM there (e.g. "
            f"`{example}`) or use the 'rules' backend.")
    return LocalBackend(str(path))


def generate_rewrite(name: str, prompt: str, kind: str, *, task_name: str, principle: str,
                     consequence: str, subject: str) -> str | None:
    """One validated sentence from the LLM, or None (the caller falls back to the rules)."""
    if kind not in INSTRUCTIONS:
        raise ScienceT2IError(f"unknown rewrite kind {kind!r}; use {sorted(INSTRUCTIONS)}.")
    instruction = INSTRUCTIONS[kind].format(task=task_name, principle=principle,
                                            consequence=consequence, subject=subject)
    text = rewriter(name).generate([prompt], system=instruction,
                                   max_new_tokens=MAX_NEW_TOKENS)
    sentence = validate_sentence(text, subject)
    if sentence is None:
        log.info("LLM %s gave no usable %s sentence (%r); using the rules", name, kind,
                 text[:120])
    return sentence
