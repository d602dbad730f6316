"""The questions the pack asks a multimodal model, and how their replies are read.

Three protocols, each one prompt plus a reader (``choices``, ``free_answers``):
- pairwise: which of two images fits a prompt (Science-T2I's LMM baseline, eval/eval_lmm.py:
  the prompt and both images, answer ``{"choice": "image-1" | "image-2"}``);
- quiz: answer a question about one image, from its options when it has them (SciGenBench's
  inverse validation: can the question be answered from the generated image alone);
- rubric: 0-2 on SciGenBench's five dimensions for a figure against its problem text.
Pairwise judging is asked in both image orders (``judge_both_orders``, the paper's protocol):
when the two answers disagree the verdict is a tie (position bias, not a preference).
An unparseable reply is never guessed: it comes back with ``ok`` False and its text, and
callers count it as wrong and report it.

The backends (local transformers model, OpenAI-compatible endpoint) are in ``lmm``; every
protocol takes anything with ``.generate(parts) -> str``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ScienceT2IError
from .choices import parse_option, parse_pair_choice
from .free_answers import (SCORE_KEYS, final_answer_text, match_free_answer, parse_scores,
                           parse_verdict)
from .reply_text import Parsed

log = logging.getLogger("science_t2i")

# Bumped whenever a prompt below changes, so cached replies to an older wording are not reused.
PROMPT_VERSION = "1"

PAIR_PROMPT = (
    "Prompt: {prompt}\n\n"
    "Above are two images, Image-1 and Image-2, generated for this prompt. Think about what the "
    "prompt implies scientifically (the physical, chemical or biological outcome it describes), "
    "then decide which image depicts that outcome more faithfully. Judge the science, not the "
    "artistic quality.\n"
    'Answer with JSON only: {{"choice": "image-1"}} or {{"choice": "image-2"}}.')

QUIZ_PROMPT = (
    "You are shown a scientific figure. Answer the question using only what the figure shows "
    "together with the question text.\n\nQuestion:\n{question}\n{options}\n"
    "{instruction}")
QUIZ_WITH_OPTIONS = ("Reason briefly, then give your final answer on the last line as "
                     "'Answer: X' where X is the letter of one option.")
QUIZ_FREE = ("Reason briefly, then give your final answer on the last line as 'Answer: ...' "
             "(a number with its unit, an expression or a short phrase).")

GRADE_PROMPT = (
    "You grade an answer against the reference. Question:\n{question}\n\nReference answer: "
    "{gold}\nStudent answer: {prediction}\n\nDoes the student's final answer agree with the "
    "reference (equivalent values, expressions or wording count as agreeing)? Reply with JSON "
    'only: {{"correct": true}} or {{"correct": false}}.')

RUBRIC_PROMPT = (
    "You are a strict expert reviewer of scientific and technical figures (geometry, physics, "
    "chemistry, biology, charts). The figure was drawn for the problem below. Rate it from 0 "
    "(poor) to 2 (excellent) on each dimension:\n"
    "- Correctness_Fidelity: every element, label and relation the problem states is present "
    "and right, with nothing invented.\n"
    "- Layout_Precision: clean, precise lines and positions consistent with the stated "
    "coordinates and proportions.\n"
    "- Readability_Occlusion: labels and elements are distinct; nothing important overlaps.\n"
    "- Scientific_Plausibility: the figure follows the conventions and laws of its field "
    "(angles, balanced forces, bond geometry, ...).\n"
    "- Expressiveness_Richness: the figure conveys the whole situation of the problem, not only "
    "a bare skeleton.\n\n"
    "Problem:\n{question}\n\n"
    "Give one short sentence of reasoning per dimension, then the scores as a JSON object with "
    "integer values, e.g. {{\"Correctness_Fidelity\": 1, \"Layout_Precision\": 2, "
    "\"Readability_Occlusion\": 2, \"Scientific_Plausibility\": 1, "
    "\"Expressiveness_Richness\": 1}}.")

PAIR_TOKENS, QUIZ_TOKENS, RUBRIC_TOKENS, GRADE_TOKENS = 256, 512, 768, 128


@dataclass(frozen=True)
class Quiz:
    """One question about an image: options letter -> text (empty: free-form) and the gold
    answer (an option letter, or free text)."""
    question: str
    options: Mapping[str, str]
    answer: str


def _options_block(options: Mapping[str, str]) -> str:
    return "Options:\n" + "\n".join(f"{k}. {v}" for k, v in options.items()) if options else ""


def judge_pair(backend: Any, first: Any, second: Any, prompt: str, *,
               strict: bool = False) -> Parsed:
    """Which image fits ``prompt``: value 1 (``first``) or 2 (``second``), images as PIL.

    ``strict``: the reference's rule, the whole reply must be the JSON it asked for
    (eval_lmm.py ``json.loads`` then ``choice == "image-1"``); otherwise the robust parser.
    """
    text = backend.generate(["Image-1:", first, "Image-2:", second,
                             PAIR_PROMPT.format(prompt=prompt)], max_new_tokens=PAIR_TOKENS)
    return strict_pair_choice(text) if strict else parse_pair_choice(text)


# One order of a pair: (first image, second image) -> the judge's reply text.
AskPair = Callable[[Any, Any], str]


@dataclass(frozen=True)
class BothOrders:
    """A pair judged with A shown first (``forward``) and, unless asked once, with B shown
    first (``reverse``)."""
    forward: Parsed
    reverse: Parsed | None

    @property
    def picks(self) -> list[str | None]:
        """The image each order chose, "A" or "B" (None: unreadable)."""
        picks = [{1: "A", 2: "B"}.get(self.forward.value)]
        if self.reverse is not None:
            picks.append({1: "B", 2: "A"}.get(self.reverse.value))
        return picks

    @property
    def verdict(self) -> str:
        """"A", "B", "tie" (the orders disagree) or "unparseable"."""
        picks = self.picks
        if any(p is None for p in picks):
            return "unparseable"
        return picks[0] if len(set(picks)) == 1 else "tie"

    @property
    def texts(self) -> list[str]:
        return [p.text.strip() for p in (self.forward, self.reverse) if p is not None]


def judge_both_orders(backend: Any, image_a: Any, image_b: Any, prompt: str, *,
                      both: bool = True, strict: bool = False,
                      ask: AskPair | None = None) -> BothOrders:
    """Which of ``image_a`` and ``image_b`` fits ``prompt``, asked with A first and then
    (``both``) with B first. ``ask`` replaces the plain call for one order (e.g. a cached
    one); ``strict`` reads the replies as ``judge_pair`` does."""
    def read(first: Any, second: Any) -> Parsed:
        if ask is None:
            return judge_pair(backend, first, second, prompt, strict=strict)
        text = ask(first, second)
        return strict_pair_choice(text) if strict else parse_pair_choice(text)
    forward = read(image_a, image_b)
    return BothOrders(forward, read(image_b, image_a) if both else None)


def strict_pair_choice(text: str) -> Parsed:
    """eval_lmm.py's reading: the reply parsed as JSON whose "choice" is exactly "image-1" or
    "image-2"; anything else is a wrong answer."""
    import json
    try:
        choice = json.loads(text).get("choice", "")
    except (ValueError, AttributeError):
        return Parsed(None, "the reply is not the JSON object asked for", text)
    value = {"image-1": 1, "image-2": 2}.get(choice)
    return Parsed(value, "" if value else f"choice {choice!r} is not image-1 or image-2", text)


def ask_quiz(backend: Any, image: Any, quiz: Quiz) -> str:
    instruction = QUIZ_WITH_OPTIONS if quiz.options else QUIZ_FREE
    text = QUIZ_PROMPT.format(question=quiz.question.strip(),
                              options=_options_block(quiz.options), instruction=instruction)
    return backend.generate([image, text], max_new_tokens=QUIZ_TOKENS)


def quiz_answer(reply: str, quiz: Quiz) -> Parsed:
    """The judge's answer in ``reply``: an option letter when the quiz has options, else the
    free-form final answer."""
    if quiz.options:
        return parse_option(reply, dict(quiz.options))
    final = final_answer_text(reply)
    return Parsed(final or None, "" if final else "the reply is empty", reply)


def gold_letter(quiz: Quiz) -> str | None:
    """The gold answer as an option letter: "B", "B: 12 N", "(B)" or the option's text."""
    gold = quiz.answer.strip()
    parsed = parse_option(gold, dict(quiz.options))
    return parsed.value if parsed.ok else None


def grade_quiz(reply: str, quiz: Quiz, *, grader: Any = None) -> tuple[bool, Parsed]:
    """(correct, parsed answer). With options: the parsed letter against the gold letter.
    Free-form: numbers and short answers compared by ``match_free_answer``, or, with
    ``grader`` (a text backend), the grader's verdict as in SciGenBench's verification step.
    """
    if quiz.options:
        parsed = parse_option(reply, dict(quiz.options))
        gold = gold_letter(quiz)
        if gold is None:
            raise ScienceT2IError(
                f"the gold answer {quiz.answer!r} is not one of the options "
                f"{list(quiz.options)}; give the option letter (e.g. 'B').")
        return bool(parsed.ok and parsed.value == gold), parsed
    if grader is not None:
        verdict = grader.generate([GRADE_PROMPT.format(question=quiz.question, gold=quiz.answer,
                                                       prediction=reply)],
                                  max_new_tokens=GRADE_TOKENS)
        parsed = parse_verdict(verdict)
        return bool(parsed.ok and parsed.value), parsed
    parsed = match_free_answer(reply, quiz.answer)
    return bool(parsed.ok and parsed.value), parsed


def rate_figure(backend: Any, image: Any, question: str) -> Parsed:
    """SciGenBench's five 0-2 scores for ``image`` against its problem text."""
    text = backend.generate([image, RUBRIC_PROMPT.format(question=question.strip())],
                            max_new_tokens=RUBRIC_TOKENS)
    return parse_scores(text, SCORE_KEYS)


def parse_choice_lines(text: str) -> dict[str, str]:
    """Options typed one per line in a node ("A. 12 N", "B) 15 N", or bare texts lettered in
    order) -> {"A": "12 N", ...}."""
    import re
    options: dict[str, str] = {}
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for n, line in enumerate(lines):
        m = re.match(r"^\(?([A-Za-z])[.):\]]\s*(.+)$", line)
        letter, body = (m.group(1).upper(), m.group(2).strip()) if m else (chr(65 + n), line)
        if letter in options:
            raise ScienceT2IError(f"choice {letter} is given twice in {text!r}; put one option "
                                  "per line (A. ..., B. ...).")
        options[letter] = body
    if len(options) > 26:
        raise ScienceT2IError("more than 26 choices; give at most A-Z.")
    return options
