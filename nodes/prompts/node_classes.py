"""The prompt nodes: Science Prompt Builder, Implicit to Explicit, Prompt Task Detect."""
from __future__ import annotations

from ..lmm import list_llms
from .rewrite import RULES_BACKEND, implicit_to_explicit
from .rules import NONE_TASK, build_triple, detect_task, extract_subject, task_codes


def _task_choices() -> list[str]:
    return task_codes()


def _backend_choices() -> list[str]:
    try:
        return [RULES_BACKEND] + list_llms()
    except Exception:  # an unreadable models dir must not hide the node
        return [RULES_BACKEND]


class PromptBuilderNode:
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


class ImplicitToExplicitNode:
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


class PromptTaskDetectNode:
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
    "ScienceT2I_PromptBuilder": PromptBuilderNode,
    "ScienceT2I_ImplicitToExplicit": ImplicitToExplicitNode,
    "ScienceT2I_PromptTaskDetect": PromptTaskDetectNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_PromptBuilder": "Science Prompt Builder",
    "ScienceT2I_ImplicitToExplicit": "Implicit to Explicit",
    "ScienceT2I_PromptTaskDetect": "Prompt Task Detect",
}
