"""What every reply reader shares: the ``Parsed`` result and the clean-up of raw replies.

Judges are asked for JSON but answer in fences, prose, markdown, after <think> blocks or
amid echoed chat turns. Every parser returns a `Parsed`: the value, or None plus a reason,
always with the raw text, so unparseable replies can be reported instead of silently scored.
Rule of thumb: an explicit final answer ("the answer is X") beats anything said before it,
and a reply that names two candidates without a clear final one is None, never a guess.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_ANSWER_KEYS = ("choice", "answer", "final_answer", "option", "preferred", "better_image")


@dataclass(frozen=True)
class Parsed:
    value: Any  # the parsed answer, or None when unparseable
    reason: str  # "" when parsed, otherwise why not
    text: str  # the raw reply

    @property
    def ok(self) -> bool:
        return self.value is not None


def failed(reason: str, text: str) -> Parsed:
    return Parsed(None, reason, text)


# --- cleaning -------------------------------------------------------------------------------
_THINK_TAGS = r"(?:think|thinking|reasoning)"


def strip_thinking(text: str) -> str:
    """Drop <think>...</think> blocks (one pass over the tags, so huge replies stay cheap)."""
    text, kept, depth, pos = text or "", [], 0, 0
    for m in re.finditer(rf"<(/?){_THINK_TAGS}>", text, re.I):
        if depth == 0:
            kept.append(text[pos:m.start()])
        if m[1] and depth == 0:  # Qwen3 templates put the opening tag in the prompt
            kept = []
        depth = max(0, depth - 1) if m[1] else depth + 1
        pos = m.end()
    if depth == 0:  # else the reply was cut off mid-thought and holds no answer
        kept.append(text[pos:])
    return " ".join(kept).strip()


def reply_body(text: str) -> str:
    """The answer part: no thinking, special tokens, or echoed prompt before 'assistant'."""
    text = strip_thinking(text)
    text = re.sub(r"<\|[^|>]*\|>|</?s>|\[/?INST\]", "\n", text)
    parts = re.split(r"(?im)^\s*assistant\s*:?\s*$|\bASSISTANT:", text)
    return parts[-1].strip()


def plain_text(text: str) -> str:
    """Markdown emphasis and code marks removed (they wrap answers: **Answer:** `B`)."""
    return re.sub(r"[*`#]+|(?<!\w)_+|_+(?!\w)", "", text)


def sentences(t: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", t) if s.strip()]


def closing_brace(text: str, start: int) -> int:
    """Index of the "}" closing the "{" at `start`, or -1."""
    depth = 0
    for j in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return -1


def _loads(s: str) -> Any:
    try:
        return json.loads(s)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        pass
    # Common judge slips: comments, trailing commas, single quotes, Python literals.
    s = re.sub(r"/\*.*?\*/|(?<![:\\])//[^\n]*", "", s, flags=re.S)
    s = re.sub(r",\s*([}\]])", r"\1", s)
    if '"' not in s:
        s = s.replace("'", '"')
    s = re.sub(r"([{,]\s*)([A-Za-z_]\w*)\s*:", r'\1"\2":', s)
    for python, js in (("True", "true"), ("False", "false"), ("None", "null")):
        s = re.sub(rf"\b{python}\b", js, s)
    try:
        return json.loads(s)
    except (ValueError, RecursionError):
        return None


def _brace_pairs(text: str) -> list[tuple[int, int]]:
    """(start, end) of every balanced {...}, in one pass. Quotes count only inside braces,
    so apostrophes and quotes in the prose around a JSON object do not hide it."""
    pairs, stack, in_str, esc = [], [], False, False
    for j, c in enumerate(text):
        if in_str:
            esc, in_str = (False, True) if esc else (c == "\\", c != '"')
        elif c == '"' and stack:
            in_str = True
        elif c == "{":
            stack.append(j)
        elif c == "}" and stack:
            pairs.append((stack.pop(), j))
    return sorted(pairs)


def json_objects(text: str) -> list[dict]:
    """Every parseable {...} object in the text, outermost first, in order (fenced or bare)."""
    found, done = [], -1
    for start, end in _brace_pairs(text):
        if start > done and isinstance(obj := _loads(text[start:end + 1]), dict):
            found.append(obj)
            done = end
    return found


def answer_field(text: str) -> Any:
    """The answer value of the last JSON object that has one, else None."""
    for obj in reversed(json_objects(text)):
        low = {str(k).strip().lower(): v for k, v in obj.items()}
        for key in _ANSWER_KEYS:
            if low.get(key) is not None:
                return low[key]
    return None
