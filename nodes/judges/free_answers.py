"""Reading values from judge replies: SciGenBench's five 0-2 rubric scores, free-form quiz
answers (numbers with units, expressions, short phrases) compared with the gold answer, and
a grader's verdict."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ScienceT2IError
from .reply_text import (Parsed, answer_field, closing_brace, failed, json_objects, plain_text,
                         reply_body, strip_thinking)

SCORE_KEYS = ("Correctness_Fidelity", "Layout_Precision", "Readability_Occlusion",
              "Scientific_Plausibility", "Expressiveness_Richness")


# --- five-dimension scores ------------------------------------------------------------------
def _key_norm(key: str) -> str:
    """'Correctness & Fidelity', 'correctness_fidelity', 'Correctness and Fidelity' -> same."""
    return re.sub(r"[^a-z0-9]", "", re.sub(r"\band\b", "", str(key).lower()))


def _dicts(obj: Any) -> Iterator[dict]:
    """The object and every dict nested in it ({"scores": {...}} wrappers)."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _dicts(v)


def _score_lines(text: str) -> dict[str, str]:
    """'Label: 2', '**Label:** 1/2', '- Label - 2' and '| Label | 2 |' lines; last one wins."""
    found = {}
    for line in plain_text(text).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2:
            label, rest = cells[0], cells[1]
        # Quotes allowed around the label: a truncated JSON object still reads line by line.
        elif m := re.match(r"\s*(?:[-•>{]|\d+[.)])?\s*[\"']?([A-Za-z][\w&/-]*(?: +[\w&/-]+)*)"
                           r"[\"']?\s*(?:\([^)]*\)\s*)?(?:[:=]|[-–—]\s)\s*(.*)", line):
            label, rest = m[1], m[2]
        else:
            continue
        if m := re.match(r"(?:score\s*[:=]?\s*)?([-+]?\d+(?:\.\d+)?)(?:\s*/\s*\d+)?(?!\.?\d)",
                         rest, re.I):
            found[_key_norm(label)] = m[1]
    return found


def _score_value(v: Any) -> float | None:
    if isinstance(v, dict):  # {"score": 2, "reason": "..."}
        v = {str(k).lower(): x for k, x in v.items()}.get("score")
    if isinstance(v, str) and (m := re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*\d+)?\s*", v)):
        v = float(m[1])
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None  # JSON true, "high", NaN are not scores
    return v


def parse_scores(text: str, keys: Sequence[str] = SCORE_KEYS, *, low: int = 0,
                 high: int = 2) -> Parsed:
    """Integer scores in [low, high] for every key: value is {key: int} in `keys` order."""
    raw = "" if text is None else str(text)
    wanted = {_key_norm(k): k for k in keys}
    if not keys or len(wanted) != len(keys) or low > high:
        raise ScienceT2IError(f"parse_scores needs distinct keys and low <= high, got keys="
                              f"{list(keys)!r}, low={low}, high={high}")
    t = reply_body(raw)
    if not t:
        return failed("empty reply", raw)
    objects = [{_key_norm(k): v for k, v in d.items()}
               for obj in json_objects(t) for d in _dicts(obj)]
    lines = _score_lines(t)
    # The last complete JSON object is the judge's final word; lines only when none is complete.
    complete = [c for c in objects + [lines] if all(k in c for k in wanted)]
    if not complete:  # report what the best attempt lacked
        best = max(objects + [lines], key=lambda c: sum(k in c for k in wanted))
        missing = [wanted[k] for k in wanted if k not in best]
        return failed("no scores found" if len(missing) == len(wanted) else
                     f"missing scores: {', '.join(missing)}", raw)
    chosen = complete[-2] if len(complete) > 1 and complete[-1] is lines else complete[-1]
    values = {wanted[k]: _score_value(chosen[k]) for k in wanted}
    bad = {k: chosen[_key_norm(k)] for k, v in values.items() if v is None or v != int(v)}
    if bad:
        return failed("non-integer scores: " + ", ".join(f"{k}={v}" for k, v in bad.items()), raw)
    out = {k: int(v) for k, v in values.items()}
    off = {k: v for k, v in out.items() if not low <= v <= high}
    if off:
        return failed("scores out of range: " + ", ".join(f"{k}={v}" for k, v in off.items()), raw)
    return Parsed(out, "", raw)


# --- free-form answers vs a gold answer -----------------------------------------------------
_NUM = re.compile(
    r"(?<![\w.^])([-+]?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+))"  # mantissa, thousands commas
    r"(?:\s*/\s*([-+]?\d+(?:\.\d+)?)(?![\d.]))?"  # a fraction 3/4
    r"(?:[eE]([-+]?\d+)|\s*[×x*]\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?"  # 3e8, 3 × 10^{8}
    r"|\s*\^\s*\{?\s*([-+]?\d+)\s*\}?)?"  # 10^3
    r"(\s*%)?")
_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_FREE_REFUSE = re.compile(r"(?:cannot|can't|can ?not|unable to)\s+(?:be\s+)?(?:determine|answer|"
                          r"tell|solve)|i (?:do not|don't) know|not enough information", re.I)


def delatex(s: str) -> str:
    s = s.replace("−", "-").replace("$", " ").replace("\\%", "%")
    s = re.sub(r"\\(?:left|right|[,;:! ])", " ", s)
    s = re.sub(r"\\(?:text\w*|mathrm|mathbf|operatorname)\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", "°", s)
    return s.replace("\\times", "×").replace("\\cdot", "×")


def numbers_in(s: str) -> list[tuple[float, ...]]:
    """Each number as its possible values (a percentage may mean 75 or 0.75)."""
    out = []
    for m in _NUM.finditer(s):
        v = float(m[1].replace(",", ""))
        if m[2]:
            if float(m[2]) == 0:
                continue
            v /= float(m[2])
        try:
            v = v ** int(m[5]) if m[5] else v * 10.0 ** int(m[3] or m[4] or 0)
        except (OverflowError, ZeroDivisionError, ValueError):  # "10^999", "0^-1", 5000 digits
            continue
        out.append((v, v / 100) if m[6] else (v,))
    if not out:
        out = [(float(_WORDS.index(w)),) for w in re.findall(r"[a-z]+", s.lower()) if w in _WORDS]
    return out


def _answer_span(text: str) -> tuple[str, bool]:
    """(the stated answer, True) from \\boxed{}, 'answer is ...' or JSON; else (text, False)."""
    i = text.rfind("\\boxed{")
    if i != -1 and (end := closing_brace(text, i + 6)) != -1:
        return text[i + 7:end], True
    field = answer_field(text)
    if field is not None:
        return str(field), True
    hits = re.findall(r"answer\s*(?:is|would be|should be|=|:)\s*(.+)", text, re.I)
    if hits:
        return re.split(r"\.(?=\s|$)|\n", hits[-1])[0], True
    return text, False


def _words(s: str) -> list[str]:
    return re.sub(r"[^\w°%]+", " ", plain_text(delatex(s)).lower()).split()


def match_free_answer(prediction: str, gold: str, *, rel_tol: float = 1e-2) -> Parsed:
    """Whether a free-form prediction states the gold answer: value True/False.

    Numbers are compared within `rel_tol` (units ignored: "12 N" == "12"); other answers
    word by word, ignoring case, spaces and punctuation."""
    raw = "" if prediction is None else str(prediction)
    if gold is None or not str(gold).strip() or rel_tol < 0:
        raise ScienceT2IError(f"match_free_answer needs a non-empty gold answer and rel_tol >= 0, "
                              f"got gold={gold!r}, rel_tol={rel_tol}")
    t = reply_body(raw)
    if not t:
        return failed("empty prediction", raw)
    span, stated = _answer_span(t)
    if not stated and _FREE_REFUSE.search(t):
        return failed("refusal", raw)
    gold_text = delatex(_answer_span(str(gold))[0]).strip(" ~≈=")
    gold_nums = numbers_in(gold_text)
    if gold_nums and re.match(r"[-+]?\.?\d", gold_text):  # a numeric answer ("H2O" is not)
        nums = numbers_in(delatex(span))
        if len(nums) < len(gold_nums):
            return failed("no number found in prediction", raw)
        # A stated or leading answer gives its numbers first; reasoning ends with its result.
        first = stated or re.match(r"\s*[-+]?\.?\d", span)
        nums = nums[:len(gold_nums)] if first else nums[-len(gold_nums):]
        same = all(any(math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12) for a in p for b in g)
                   for p, g in zip(nums, gold_nums, strict=True))
        return Parsed(same, "", raw)
    said, want = _words(span), _words(str(gold))
    if not said:
        return failed("no answer found in prediction", raw)
    for ws in (said, want):  # a leading article is not part of the answer
        if len(ws) > 1 and ws[0] in ("a", "an", "the"):
            del ws[0]
    if said == want:
        return Parsed(True, "", raw)
    # A short sentence around the gold ("It is Newton's third law.") still states it.
    n = len(want)
    inside = any(said[i:i + n] == want for i in range(len(said) - n + 1))
    negated = bool({"not", "no", "never", "isn", "neither", "nor"} & set(said) - set(want))
    return Parsed(inside and len(said) <= n + 4 and not negated, "", raw)


# --- a grader's verdict, and the answer of a free-form reply -------------------------------
def parse_verdict(text: str) -> Parsed:
    """A grading model's verdict (value True/False): the last JSON object with "correct" or
    "is_correct" (true/false, 1/0), else the last of correct/incorrect/true/false/yes/no."""
    body = strip_thinking(text or "")
    for obj in reversed(json_objects(body)):
        for key in ("correct", "is_correct"):
            v = obj.get(key)
            if isinstance(v, (bool, int)) and v in (0, 1):
                return Parsed(bool(v), "", text)
    word = re.findall(r"\b(correct|incorrect|true|false|yes|no)\b", body.lower())
    if word:
        return Parsed(word[-1] in ("correct", "true", "yes"), "", text)
    return failed("no verdict found in the grader's reply", text)


def final_answer_text(reply: str) -> str:
    """The answer a free-form reply states (\\boxed{}, 'Answer: ...', JSON), else its last
    line; "" for an empty reply."""
    body = plain_text(reply_body(reply or ""))
    span, stated = _answer_span(body)
    if stated:
        return span.strip()
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
