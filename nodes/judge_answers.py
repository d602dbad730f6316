"""Parse what multimodal judges (Qwen-VL, LLaVA, GPT-4o, Gemini...) actually reply.

Judges are asked for JSON but answer in fences, prose, markdown, after <think> blocks or
amid echoed chat turns. Every parser returns a `Parsed`: the value, or None plus a reason,
always with the raw text, so unparseable replies can be reported instead of silently scored.
Rule of thumb: an explicit final answer ("the answer is X") beats anything said before it,
and a reply that names two candidates without a clear final one is None, never a guess.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ScienceT2IError

SCORE_KEYS = ("Correctness_Fidelity", "Layout_Precision", "Readability_Occlusion",
              "Scientific_Plausibility", "Expressiveness_Richness")
_ANSWER_KEYS = ("choice", "answer", "final_answer", "option", "preferred", "better_image")


@dataclass(frozen=True)
class Parsed:
    value: Any  # the parsed answer, or None when unparseable
    reason: str  # "" when parsed, otherwise why not
    text: str  # the raw reply

    @property
    def ok(self) -> bool:
        return self.value is not None


def _fail(reason: str, text: str) -> Parsed:
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


def _reply(text: str) -> str:
    """The answer part: no thinking, special tokens, or echoed prompt before 'assistant'."""
    text = strip_thinking(text)
    text = re.sub(r"<\|[^|>]*\|>|</?s>|\[/?INST\]", "\n", text)
    parts = re.split(r"(?im)^\s*assistant\s*:?\s*$|\bASSISTANT:", text)
    return parts[-1].strip()


def _plain(text: str) -> str:
    """Markdown emphasis and code marks removed (they wrap answers: **Answer:** `B`)."""
    return re.sub(r"[*`#]+|(?<!\w)_+|_+(?!\w)", "", text)


def _sentences(t: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", t) if s.strip()]


def _closing_brace(text: str, start: int) -> int:
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


def _json_objects(text: str) -> list[dict]:
    """Every parseable {...} object in the text, outermost first, in order (fenced or bare)."""
    found, done = [], -1
    for start, end in _brace_pairs(text):
        if start > done and isinstance(obj := _loads(text[start:end + 1]), dict):
            found.append(obj)
            done = end
    return found


def _answer_field(text: str) -> Any:
    """The answer value of the last JSON object that has one, else None."""
    for obj in reversed(_json_objects(text)):
        low = {str(k).strip().lower(): v for k, v in obj.items()}
        for key in _ANSWER_KEYS:
            if low.get(key) is not None:
                return low[key]
    return None


# --- pairwise choice ------------------------------------------------------------------------
_IMG = r"(?:image|img|picture|pic|photo)"
_REF = (rf"\b{_IMG}\s*(?:no\.?|number|\#)?\s*[-_]?\s*(?P<n>[12]|one|two)(?!\w)"
        rf"|\b(?P<o>first|second|1st|2nd)\s+(?:{_IMG}|one)\b|\bthe\s+(?P<f>former|latter)\b")
_REF_AB = _REF + rf"|\b{_IMG}\s*[-_]?\s*(?P<l>(?-i:[AB]))\b"
_NEG = re.compile(r"(?:\bnot|\bnor|\bnever|n't|\bcannot|\bwhether|\bif|\bunable to)\s+$", re.I)
# "<decision word> ... <image>" and "<image> is better ..."; %s is the image reference.
_DECIDE = (r"\b(?:final(?: answer)?|answer|choice|choose|chose|select(?:ed)?|pick(?:ed)?"
           r"|prefer(?:red)?|verdict|winner|go(?:ing)? with"
           r"|(?:better|best)\s+(?:one|image|match|option|fit)\s+is)"
           r"\W{0,4}(?:(?:is|would be|will be|should be|must be)\W{1,4})?(?:the\s+)?(?:%s)")
_BETTER = (r"(?:%s)\s+(?:(?:is|was|seems|appears|looks)\s+(?:to be\s+)?"
           r"(?:clearly\s+|much\s+|far\s+|slightly\s+|the\s+)?"
           r"(?:better|more|superior|preferred|preferable|correct|best|closer)"
           r"|(?:better|best|more accurately)\s+(?:fits|matches|follows|aligns|depicts|shows)"
           r"|(?:fits|matches|follows|aligns with|depicts|captures|reflects)\s+(?:the\s+\w+\s+)?"
           r"(?:better|best|more))")
_PAIR_REFUSE = re.compile(
    r"\bneither\b|\bnone of\b|\btie\b|\bequally\b|^\W*both\W*$"
    r"|\bboth\b(?:\s+(?:images?|of them))?\s+(?:are|fit|match|satisfy|seem|look)\b"
    r"|(?:cannot|can't|can ?not|unable to|impossible to)\s+(?:\w+\s+)?"
    r"(?:determine|decide|tell|choose|judge|say|evaluate|assess|compare|pick)", re.I)


def _ref_value(m: re.Match) -> int:
    word = (m["n"] or m["o"] or m["f"] or m.groupdict().get("l") or "").lower()
    return 1 if word in ("1", "one", "first", "1st", "former", "a") else 2


def parse_pair_choice(text: str, *, letters: bool = False) -> Parsed:
    """Which of two images the judge chose: value 1 or 2. `letters`: A/B also mean 1/2."""
    raw = "" if text is None else str(text)
    t = _reply(raw)
    if not t:
        return _fail("empty reply", raw)
    field = _answer_field(t)
    if field is not None:
        if isinstance(field, (int, float)) and field in (1, 2):
            return Parsed(int(field), "", raw)
        inner = parse_pair_choice(str(field), letters=letters)
        return Parsed(inner.value, "", raw) if inner.ok else _fail(
            f"unrecognised choice value {field!r}", raw)
    t = _plain(t)
    # The whole reply is a number or an ordinal: "2", "Second."
    bare = r"\W*(?:(?P<n>[12]|one|two)|(?P<o>first|second)|(?P<f>former|latter))\W*"
    if m := re.fullmatch(bare, t, re.I):
        return Parsed(_ref_value(m), "", raw)
    ref = re.compile(_REF_AB if letters else _REF, re.I)
    for pattern, pick in ((_DECIDE, -1), (_BETTER, 0)):  # explicit decisions, last one wins
        hits = [m for m in re.finditer(pattern % ref.pattern, t, re.I)
                if not _NEG.search(t[max(0, m.start() - 14):m.start()])]
        if hits:
            return Parsed(_ref_value(list(ref.finditer(hits[-1][0]))[pick]), "", raw)
    if _PAIR_REFUSE.search(t):
        return _fail("refusal, tie or 'both/neither'", raw)
    refs = {_ref_value(m) for m in ref.finditer(t)}
    if not refs and letters:
        opt = parse_option(t, "AB")
        return Parsed("AB".index(opt.value) + 1, "", raw) if opt.ok else _fail(opt.reason, raw)
    if len(refs) == 1:
        return Parsed(refs.pop(), "", raw)
    last = (_sentences(t) or [""])[-1]  # both named: only a bare final "Image 2." settles it
    if len(last.split()) <= 4 and len(found := {_ref_value(m) for m in ref.finditer(last)}) == 1:
        return Parsed(found.pop(), "", raw)
    if refs:
        return _fail("names both images without a final choice", raw)
    return _fail("no image choice found", raw)


# --- multiple-choice letter -----------------------------------------------------------------
_OPT_REFUSE = re.compile(
    r"none of the (?:above|options|choices)|no correct (?:answer|option)|not enough information"
    r"|insufficient information|(?:cannot|can't|can ?not|unable to)\s+(?:be\s+)?(?:determine|"
    r"determined|tell|answer|decide)|i (?:do not|don't) know", re.I)


def _option_texts(options: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    pairs = options.items() if isinstance(options, Mapping) else ((k, "") for k in options)
    out = {str(k).strip().upper(): str(v) for k, v in pairs}
    if not out or not all(re.fullmatch(r"[A-Z]", k) for k in out):
        raise ScienceT2IError(f"options must be single letters ('ABCD') or a mapping letter -> "
                              f"option text ({{'A': '12 N', ...}}), got {options!r}")
    return out


# Explicit answers; {L} stands for the option letters. "\boxed{B}", "Answer: C", "I'd go with D".
_BOXED_LETTER = r"\\boxed\{\s*(?:\\text\w*\{)?\s*\(?({L})\)?\s*\}"
_STATED_LETTER = (r"\b(?:final(?:\s+answer)?|answer|correct\s+(?:option|choice)"
                  r"|best\s+(?:answer|option|choice)|(?:my|the)\s+choice"
                  r"|i\s+(?:would\s+)?(?:choose|select|pick|go\s+with))\b\s*"
                  r"(?:is|would\s+be|should\s+be)?\s*[:=-]?\s*(?:the\s+)?"
                  r"(?:option|choice|letter)?\s*[(\[]?({L})(?![\w'])")
# A reply (or its last line) that opens with the letter: "B", "(B)", "C. 12 N", "Option B: 45°".
_LEADING_LETTER = r"(?i:option|choice|answer)?\s*[:-]?\s*[(\[]?({L})(?:[)\]]|[.:](?=\s|$)|\s*$)"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w.%°/+-]+", " ", _plain(s).lower())).strip(" .")


def _stated_letter(t: str, letter: str) -> str | None:
    # A lower-case letter counts only where it cannot be the article: "answer is a ball".
    hits = [(m.start(1), m[1].upper()) for p in (_BOXED_LETTER, _STATED_LETTER)
            for m in re.finditer(p.replace("{L}", letter), t, re.I)
            if m[1].isupper() or re.match(r"\s*(?:[.)\]:,;!]|$)", t[m.end(1):])]
    return max(hits)[1] if hits else None


def _letter_by_text(t: str, texts: dict[str, str]) -> str | None:
    """The option whose text a short reply gives instead of its letter ("12 N")."""
    if not any(texts.values()) or len(t.split()) > 12:
        return None
    said, one_number = _norm(t), len(_numbers(_delatex(t))) == 1
    for same in (lambda v: _norm(v) == said,  # then "45 degrees" for "45°", one number only
                 lambda v: one_number and match_free_answer(t, v).value is True,
                 lambda v: re.search(rf"(?<!\w){re.escape(_norm(v))}(?!\w)", said)):
        hits = [k for k, v in texts.items() if v.strip() and same(v)]
        if len(hits) == 1:
            return hits[0]
    return None


def _final_letter(t: str, letters: str) -> tuple[str | None, str]:
    """The letter of the last sentence naming one, skipping "not A" and the article "A ball"."""
    for sentence in reversed(_sentences(t)):
        found = []
        for m in re.finditer(rf"(?<![\w'])([{letters}])(?![\w'])", sentence):
            before, after = sentence[max(0, m.start() - 30):m.start()], sentence[m.end():]
            article = m[1] in "AI" and re.match(r"\s+[a-z]", after) and not re.match(
                r"\s+(?:is|was|seems|would|should|fits|matches|looks|or|and)\b", after)
            if not article and not re.search(r"(?:\bnot|\bthan|instead of|except|n't)\s*"
                                              r"(?:option\s*)?[(\[]?$", before, re.I):
                found.append((m[1], before))
        named = sorted({f[0] for f in found})
        # Several letters: only a concluding "so/therefore X" at the end settles it.
        if len(named) == 1 or found and re.search(
                r"\b(?:so|therefore|thus|hence|it's|it is|must be)\s*[:,]?\s*"
                r"(?:option\s*)?[(\[]?$", found[-1][1], re.I):
            return found[-1][0], ""
        if found:
            return None, f"several option letters without a final one: {', '.join(named)}"
    return None, "no option letter found"


def parse_option(text: str, options: Sequence[str] | Mapping[str, str] = "ABCD") -> Parsed:
    """The chosen option letter (upper case) of a multiple-choice answer."""
    raw = "" if text is None else str(text)
    texts = _option_texts(options)
    t = _plain(_reply(raw))
    if not t:
        return _fail("empty reply", raw)
    field = _answer_field(t)
    if field is not None:
        inner = parse_option(str(field), texts)
        return Parsed(inner.value, "", raw) if inner.ok else _fail(
            f"unrecognised answer value {field!r}", raw)
    ls = "".join(texts)
    letter = f"[{ls}{ls.lower()}]"
    if found := _stated_letter(t, letter):
        return Parsed(found, "", raw)
    leading = re.compile(_LEADING_LETTER.replace("{L}", letter))
    listed = {m[1].upper() for ln in t.splitlines() if (m := leading.match(ln.strip()))}
    if len(listed) == 1:
        return Parsed(listed.pop(), "", raw)
    if listed:  # the options listed (echoed or weighed) with no final answer
        return _fail(f"several option letters without a final one: {', '.join(sorted(listed))}",
                     raw)
    if found := _letter_by_text(t, texts):
        return Parsed(found, "", raw)
    if _OPT_REFUSE.search(t):
        return _fail("refusal or 'none of the above'", raw)
    found, reason = _final_letter(t, ls)
    return Parsed(found, "", raw) if found else _fail(reason, raw)


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
    for line in _plain(text).splitlines():
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
    t = _reply(raw)
    if not t:
        return _fail("empty reply", raw)
    objects = [{_key_norm(k): v for k, v in d.items()}
               for obj in _json_objects(t) for d in _dicts(obj)]
    lines = _score_lines(t)
    # The last complete JSON object is the judge's final word; lines only when none is complete.
    complete = [c for c in objects + [lines] if all(k in c for k in wanted)]
    if not complete:  # report what the best attempt lacked
        best = max(objects + [lines], key=lambda c: sum(k in c for k in wanted))
        missing = [wanted[k] for k in wanted if k not in best]
        return _fail("no scores found" if len(missing) == len(wanted) else
                     f"missing scores: {', '.join(missing)}", raw)
    chosen = complete[-2] if len(complete) > 1 and complete[-1] is lines else complete[-1]
    values = {wanted[k]: _score_value(chosen[k]) for k in wanted}
    bad = {k: chosen[_key_norm(k)] for k, v in values.items() if v is None or v != int(v)}
    if bad:
        return _fail("non-integer scores: " + ", ".join(f"{k}={v}" for k, v in bad.items()), raw)
    out = {k: int(v) for k, v in values.items()}
    off = {k: v for k, v in out.items() if not low <= v <= high}
    if off:
        return _fail("scores out of range: " + ", ".join(f"{k}={v}" for k, v in off.items()), raw)
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


def _delatex(s: str) -> str:
    s = s.replace("−", "-").replace("$", " ").replace("\\%", "%")
    s = re.sub(r"\\(?:left|right|[,;:! ])", " ", s)
    s = re.sub(r"\\(?:text\w*|mathrm|mathbf|operatorname)\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", "°", s)
    return s.replace("\\times", "×").replace("\\cdot", "×")


def _numbers(s: str) -> list[tuple[float, ...]]:
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
    if i != -1 and (end := _closing_brace(text, i + 6)) != -1:
        return text[i + 7:end], True
    field = _answer_field(text)
    if field is not None:
        return str(field), True
    hits = re.findall(r"answer\s*(?:is|would be|should be|=|:)\s*(.+)", text, re.I)
    if hits:
        return re.split(r"\.(?=\s|$)|\n", hits[-1])[0], True
    return text, False


def _words(s: str) -> list[str]:
    return re.sub(r"[^\w°%]+", " ", _plain(_delatex(s)).lower()).split()


def match_free_answer(prediction: str, gold: str, *, rel_tol: float = 1e-2) -> Parsed:
    """Whether a free-form prediction states the gold answer: value True/False.

    Numbers are compared within `rel_tol` (units ignored: "12 N" == "12"); other answers
    word by word, ignoring case, spaces and punctuation."""
    raw = "" if prediction is None else str(prediction)
    if gold is None or not str(gold).strip() or rel_tol < 0:
        raise ScienceT2IError(f"match_free_answer needs a non-empty gold answer and rel_tol >= 0, "
                              f"got gold={gold!r}, rel_tol={rel_tol}")
    t = _reply(raw)
    if not t:
        return _fail("empty prediction", raw)
    span, stated = _answer_span(t)
    if not stated and _FREE_REFUSE.search(t):
        return _fail("refusal", raw)
    gold_text = _delatex(_answer_span(str(gold))[0]).strip(" ~≈=")
    gold_nums = _numbers(gold_text)
    if gold_nums and re.match(r"[-+]?\.?\d", gold_text):  # a numeric answer ("H2O" is not)
        nums = _numbers(_delatex(span))
        if len(nums) < len(gold_nums):
            return _fail("no number found in prediction", raw)
        # A stated or leading answer gives its numbers first; reasoning ends with its result.
        first = stated or re.match(r"\s*[-+]?\.?\d", span)
        nums = nums[:len(gold_nums)] if first else nums[-len(gold_nums):]
        same = all(any(math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12) for a in p for b in g)
                   for p, g in zip(nums, gold_nums, strict=True))
        return Parsed(same, "", raw)
    said, want = _words(span), _words(str(gold))
    if not said:
        return _fail("no answer found in prediction", raw)
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
    for obj in reversed(_json_objects(body)):
        for key in ("correct", "is_correct"):
            v = obj.get(key)
            if isinstance(v, (bool, int)) and v in (0, 1):
                return Parsed(bool(v), "", text)
    word = re.findall(r"\b(correct|incorrect|true|false|yes|no)\b", body.lower())
    if word:
        return Parsed(word[-1] in ("correct", "true", "yes"), "", text)
    return _fail("no verdict found in the grader's reply", text)


def final_answer_text(reply: str) -> str:
    """The answer a free-form reply states (\\boxed{}, 'Answer: ...', JSON), else its last
    line; "" for an empty reply."""
    body = _plain(_reply(reply or ""))
    span, stated = _answer_span(body)
    if stated:
        return span.strip()
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
