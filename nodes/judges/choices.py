"""Reading choices from judge replies: which of two images (pairwise), which option letter
(quizzes). A reply that names two candidates without a clear final one is None, never a
guess."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import ScienceT2IError
from .free_answers import delatex, match_free_answer, numbers_in
from .reply_text import Parsed, answer_field, failed, plain_text, reply_body, sentences

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
    t = reply_body(raw)
    if not t:
        return failed("empty reply", raw)
    field = answer_field(t)
    if field is not None:
        if isinstance(field, (int, float)) and field in (1, 2):
            return Parsed(int(field), "", raw)
        inner = parse_pair_choice(str(field), letters=letters)
        return Parsed(inner.value, "", raw) if inner.ok else failed(
            f"unrecognised choice value {field!r}", raw)
    t = plain_text(t)
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
        return failed("refusal, tie or 'both/neither'", raw)
    refs = {_ref_value(m) for m in ref.finditer(t)}
    if not refs and letters:
        opt = parse_option(t, "AB")
        return Parsed("AB".index(opt.value) + 1, "", raw) if opt.ok else failed(opt.reason, raw)
    if len(refs) == 1:
        return Parsed(refs.pop(), "", raw)
    last = (sentences(t) or [""])[-1]  # both named: only a bare final "Image 2." settles it
    if len(last.split()) <= 4 and len(found := {_ref_value(m) for m in ref.finditer(last)}) == 1:
        return Parsed(found.pop(), "", raw)
    if refs:
        return failed("names both images without a final choice", raw)
    return failed("no image choice found", raw)


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
    return re.sub(r"\s+", " ", re.sub(r"[^\w.%°/+-]+", " ", plain_text(s).lower())).strip(" .")


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
    said, one_number = _norm(t), len(numbers_in(delatex(t))) == 1
    for same in (lambda v: _norm(v) == said,  # then "45 degrees" for "45°", one number only
                 lambda v: one_number and match_free_answer(t, v).value is True,
                 lambda v: re.search(rf"(?<!\w){re.escape(_norm(v))}(?!\w)", said)):
        hits = [k for k, v in texts.items() if v.strip() and same(v)]
        if len(hits) == 1:
            return hits[0]
    return None


def _final_letter(t: str, letters: str) -> tuple[str | None, str]:
    """The letter of the last sentence naming one, skipping "not A" and the article "A ball"."""
    for sentence in reversed(sentences(t)):
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
    t = plain_text(reply_body(raw))
    if not t:
        return failed("empty reply", raw)
    field = answer_field(t)
    if field is not None:
        inner = parse_option(str(field), texts)
        return Parsed(inner.value, "", raw) if inner.ok else failed(
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
        return failed(f"several option letters without a final one: {', '.join(sorted(listed))}",
                     raw)
    if found := _letter_by_text(t, texts):
        return Parsed(found, "", raw)
    if _OPT_REFUSE.search(t):
        return failed("refusal or 'none of the above'", raw)
    found, reason = _final_letter(t, ls)
    return Parsed(found, "", raw) if found else failed(reason, raw)
