"""ImgCoder: a language model draws a scientific figure as code (understand -> plan -> code).

Pixel models draw plausible but wrong diagrams; ImgCoder (SciGenBench, arXiv 2601.17027) has
a language model first understand the problem and plan the figure (elements, layout, labels,
given values, what must not be shown), then write matplotlib code that renders it exactly.
Here the plan and the code are two calls to any backend of ``lmm`` (a local
causal LM or VLM, or an OpenAI-compatible endpoint). The code runs only in the sandboxed
renderer (``sandbox``), never in this process; when it is refused or fails, the
error goes back to the model for at most ``repairs`` corrected versions.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import _comfy
from ..errors import ScienceT2IError
from .code_check import ALLOWED_IMPORTS, check_code
from .sandbox import RenderResult, SandboxLimits, render_figure

log = logging.getLogger("science_t2i")

PLAN_PROMPT = (
    "You are a scientific illustrator who draws textbook figures with code.\n\n"
    "Problem:\n{problem}\n{image_type}\n"
    "Think before drawing. Write two sections and no code:\n"
    "## Understanding\nWhat situation the problem describes: the objects, the given "
    "quantities with their units, and the relations between them (positions, angles, "
    "connections, directions).\n"
    "## Plan\n- Elements: every object, point, line, arrow or curve to draw.\n"
    "- Layout: coordinates or relative positions, scale and aspect ratio.\n"
    "- Labels: the names and GIVEN values to write on the figure.\n"
    "- Constraints: conventions of the field (right angles look right, forces in balance "
    "look balanced, circuits closed). Do not show the answer, a derived result or solution "
    "steps{reveal}.")
# reveal_answer=True: the problem itself asks for the result to be drawn
REVEAL_WHEN_ASKED = " unless the problem asks to show them"

CODE_PROMPT = (
    "Problem:\n{problem}\n\nFigure plan:\n{plan}\n\n"
    "Write one Python script that draws this figure with matplotlib. Rules:\n"
    "- import only from: {imports};\n"
    "- create exactly one figure (plt.subplots or plt.figure); do not call plt.show, "
    "savefig or close, and do not read or write files; the figure is saved for you at "
    "{width}x{height} pixels;\n"
    "- label what the plan lists, keep labels apart so none overlaps another;\n"
    "- use ax.set_aspect('equal') for geometry, and hide axes that carry no meaning.\n"
    "Answer with the script in one ```python code block and nothing else.")

REPAIR_PROMPT = (
    "This script was meant to draw the figure planned below, but it failed:\n\n{error}\n\n"
    "Figure plan:\n{plan}\n\nScript:\n```python\n{code}\n```\n\n"
    "Fix the problem while keeping the same rules (only the allowed imports: {imports}; one "
    "figure; no show/savefig/files). Answer with the whole corrected script in one ```python "
    "code block and nothing else.")

PLAN_TOKENS, CODE_TOKENS = 1024, 2048

_FENCE = re.compile(r"```[ \t]*(python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(reply: str) -> str | None:
    """The script in a reply: its last ```python block (else its last ``` block); a reply
    without fences counts only if it parses as Python that imports matplotlib."""
    import ast
    blocks = _FENCE.findall(reply or "")
    if blocks:
        python = [b for lang, b in blocks if lang]
        return (python or [b for _, b in blocks])[-1].strip() + "\n"
    body = re.sub(r"</?think>", "", reply or "").strip()
    if "matplotlib" in body:
        try:
            ast.parse(body)
            return body + "\n"
        except SyntaxError:
            return None
    return None


def raise_if_cancelled(result: RenderResult) -> None:
    """A render stopped by Cancel raises ComfyUI's interrupt, so the run shows as cancelled
    (not as a failed figure to repair)."""
    if getattr(result, "interrupted", False):
        _comfy.check_interrupt()
        raise ScienceT2IError("the figure render was cancelled.")


@dataclass
class ImgCoderResult:
    ok: bool
    png: bytes | None
    plan: str
    code: str
    attempts: int                    # renders tried (1 + repairs used)
    error: str = ""                  # the last failure, when not ok
    log: list[str] = field(default_factory=list)


def draw_figure(backend: Any, problem: str, *, image_type: str = "", width: int = 1024,
                height: int = 768, dpi: int = 100, repairs: int = 2,
                limits: SandboxLimits | None = None, reveal_answer: bool = False,
                render: Callable[..., RenderResult] = render_figure,
                on_step: Callable[[str], None] | None = None) -> ImgCoderResult:
    """Plan, write, render and repair one figure. Never raises for what the model writes:
    a figure that still fails after ``repairs`` comes back with ``ok`` False, its code and
    the error."""
    if not problem or not problem.strip():
        raise ScienceT2IError("the problem text is empty; give the scientific problem or "
                              "description to draw.")
    if repairs < 0:
        raise ScienceT2IError(f"repairs must be 0 or more, got {repairs}.")
    limits = limits or SandboxLimits()
    lines: list[str] = []

    def note(text: str) -> None:
        lines.append(text)
        log.info("ImgCoder: %s", text)
        if on_step:
            on_step(text)

    imports = ", ".join(sorted(ALLOWED_IMPORTS))
    type_line = f"Image type: {image_type.strip()}\n" if image_type.strip() else ""
    plan = backend.generate([PLAN_PROMPT.format(
        problem=problem.strip(), image_type=type_line,
        reveal=REVEAL_WHEN_ASKED if reveal_answer else "")],
        max_new_tokens=PLAN_TOKENS).strip()
    note(f"plan: {len(plan)} characters")
    reply = backend.generate([CODE_PROMPT.format(problem=problem.strip(), plan=plan,
                                                 imports=imports, width=width, height=height)],
                             max_new_tokens=CODE_TOKENS)
    code, error = extract_code(reply), ""
    for attempt in range(1, repairs + 2):
        if code is None:
            error = ("the reply held no Python code block; answer with the script in one "
                     "```python block")
            shown = reply.strip()[:2000]
        else:
            problems = check_code(code)
            if problems:
                error = "the script was refused before running: " + "; ".join(problems)
            else:
                result = render(code, width=width, height=height, dpi=dpi, limits=limits,
                                should_stop=_comfy.interrupt_requested)
                raise_if_cancelled(result)
                if result.ok:
                    note(f"attempt {attempt}: rendered {result.width}x{result.height} px in "
                         f"{result.seconds:.2f} s")
                    return ImgCoderResult(True, result.png, plan, code, attempt, "", lines)
                error = result.error
            shown = code
        note(f"attempt {attempt}: failed: {error.splitlines()[0] if error else '?'}")
        if attempt > repairs:
            break
        _comfy.check_interrupt()
        reply = backend.generate([REPAIR_PROMPT.format(error=error, plan=plan, code=shown,
                                                       imports=imports)],
                                 max_new_tokens=CODE_TOKENS)
        code = extract_code(reply)
    return ImgCoderResult(False, None, plan, code or "", repairs + 1, error, lines)
