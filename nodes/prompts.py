"""Scientific prompt tools: which of the 16 Science-T2I phenomena a prompt implies, its subject
(the region a mask should look for), implicit -> explicit / superficial rewrites and
(implicit, explicit, superficial) triples.

Offline rules by default (``prompt_rules``, knowledge in ``knowledge/tasks.json``); an optional
local LLM (``prompt_llm``) may reword the rewrites, with the rules as the fallback.
"""
from __future__ import annotations

from .errors import ScienceT2IError
from .prompt_rules import (NONE_TASK, Detection, Rewrite, Triple, build_triple,  # noqa: F401
                           detect_task, extract_subject, get_task, load_knowledge,
                           noun_phrase, rewrite_rules, task_codes)

RULES_BACKEND = "rules"


def implicit_to_explicit(prompt: str, task: str = "auto",
                         backend: str = RULES_BACKEND) -> Rewrite:
    """Explicit and superficial versions of an implicit prompt, with its task and subject.

    ``backend`` is "rules" or the name of an LLM directory in models/LLM; each LLM answer that
    is not one valid sentence is replaced by the rule-based one (``Rewrite.backend`` says which
    produced the explicit prompt). A prompt with no scientific cue comes back unchanged with
    task "none".
    """
    result = rewrite_rules(prompt, None if task in ("auto", "", None) else task)
    if backend in (RULES_BACKEND, "", None) or result.task == NONE_TASK:
        return result
    from .prompt_llm import generate_rewrite
    t = get_task(result.task)
    info = dict(task_name=t.name, principle=t.principle, consequence=t.visual_consequence,
                subject=result.slots.get("entity") or result.subject)
    explicit = generate_rewrite(backend, prompt, "explicit", **info)
    superficial = generate_rewrite(backend, prompt, "superficial", **info)
    return Rewrite(explicit or result.explicit, superficial or result.superficial, result.task,
                   result.subject, result.slots,
                   backend=backend if explicit else RULES_BACKEND)


# ---------------------------------------------------------------- ComfyUI nodes

def _task_choices() -> list[str]:
    return task_codes()


def _backend_choices() -> list[str]:
    from .prompt_llm import list_llms
    try:
        return [RULES_BACKEND] + list_llms()
    except Exception:  # an unreadable models dir must not hide the node
        return [RULES_BACKEND]


class ScienceT2I_PromptBuilder:
    """Task + subject (+ scene) -> implicit, explicit and superficial prompts."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "task": (_task_choices(), {"default": "RI"}),
            "subject": ("STRING", {"default": "tomato",
                                   "tooltip": "the thing the phenomenon acts on"}),
        }, "optional": {
            "scene": ("STRING", {"default": "",
                                 "tooltip": "e.g. 'in a bedroom' (complex-scene setting)"}),
        }}

    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("implicit", "explicit", "superficial")
    FUNCTION = "build"
    CATEGORY = "Science-T2I/Prompts"

    def build(self, task: str, subject: str, scene: str = ""):
        t = build_triple(task, subject, scene)
        return (t.implicit, t.explicit, t.superficial)


class ScienceT2I_ImplicitToExplicit:
    """Implicit prompt -> explicit and superficial prompts, task code and subject."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prompt": ("STRING", {"multiline": True, "default": "An unripe tomato."}),
            "task": (["auto"] + _task_choices(), {"default": "auto"}),
            "backend": (_backend_choices(), {"default": RULES_BACKEND}),
        }}

    RETURN_TYPES = ("STRING", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("explicit", "superficial", "task", "subject")
    FUNCTION = "rewrite"
    CATEGORY = "Science-T2I/Prompts"

    def rewrite(self, prompt: str, task: str = "auto", backend: str = RULES_BACKEND):
        r = implicit_to_explicit(prompt, task, backend)
        return (r.explicit, r.superficial, r.task, r.subject)


class ScienceT2I_PromptTaskDetect:
    """Prompt -> task code, task name, confidence and subject (for a subject mask)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"prompt": ("STRING", {"multiline": True,
                                                   "default": "A rarely watered rose."})}}

    RETURN_TYPES = ("STRING", "STRING", "FLOAT", "STRING")
    RETURN_NAMES = ("task", "task_name", "confidence", "subject")
    FUNCTION = "detect"
    CATEGORY = "Science-T2I/Prompts"

    def detect(self, prompt: str):
        d = detect_task(prompt)
        subject = extract_subject(prompt, None if d.code == NONE_TASK else d.code)
        return (d.code, d.name, float(d.confidence), subject)


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_PromptBuilder": ScienceT2I_PromptBuilder,
    "ScienceT2I_ImplicitToExplicit": ScienceT2I_ImplicitToExplicit,
    "ScienceT2I_PromptTaskDetect": ScienceT2I_PromptTaskDetect,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_PromptBuilder": "Science Prompt Builder",
    "ScienceT2I_ImplicitToExplicit": "Implicit to Explicit",
    "ScienceT2I_PromptTaskDetect": "Prompt Task Detect",
}

__all__ = ["ScienceT2IError", "Detection", "Rewrite", "Triple", "NONE_TASK",
           "implicit_to_explicit", "detect_task", "extract_subject", "noun_phrase",
           "build_triple", "rewrite_rules", "get_task", "task_codes", "load_knowledge",
           "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
