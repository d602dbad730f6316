"""Implicit -> explicit and superficial prompts: the rules, optionally reworded by a local
LLM (each LLM answer that is not one valid sentence is replaced by the rule-based one)."""
from __future__ import annotations

from .rules import NONE_TASK, Rewrite, get_task, rewrite_rules

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
    from .llm import generate_rewrite
    t = get_task(result.task)
    info = dict(task_name=t.name, principle=t.principle, consequence=t.visual_consequence,
                subject=result.slots.get("entity") or result.subject)
    explicit = generate_rewrite(backend, prompt, "explicit", **info)
    superficial = generate_rewrite(backend, prompt, "superficial", **info)
    return Rewrite(explicit or result.explicit, superficial or result.superficial, result.task,
                   result.subject, result.slots,
                   backend=backend if explicit else RULES_BACKEND)
