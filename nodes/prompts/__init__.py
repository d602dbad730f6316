"""Scientific prompt tools: which of the 16 Science-T2I phenomena a prompt implies, its subject
(the region a mask should look for), implicit -> explicit / superficial rewrites and
(implicit, explicit, superficial) triples.

Offline rules by default (``rules``, knowledge in ``knowledge/tasks.json``); an optional local
LLM (``llm``) may reword the rewrites, with the rules as the fallback (``rewrite``).
"""
from .rewrite import RULES_BACKEND, implicit_to_explicit
from .rules import (NONE_TASK, Detection, Rewrite, Triple, build_triple, detect_task,
                    extract_subject, get_task, load_knowledge, noun_phrase, rewrite_rules,
                    task_codes)

__all__ = ["NONE_TASK", "RULES_BACKEND", "Detection", "Rewrite", "Triple", "build_triple",
           "detect_task", "extract_subject", "get_task", "implicit_to_explicit",
           "load_knowledge", "noun_phrase", "rewrite_rules", "task_codes"]
