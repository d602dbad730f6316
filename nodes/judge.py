"""Multimodal-model judges: the questions the pack asks an LMM, and their nodes.

Three protocols, each one prompt plus a parser from ``judge_answers``:
- pairwise: which of two images fits a prompt (Science-T2I's LMM baseline, eval/eval_lmm.py:
  the prompt and both images, answer ``{"choice": "image-1" | "image-2"}``);
- quiz: answer a question about one image, from its options when it has them (SciGenBench's
  inverse validation: can the question be answered from the generated image alone);
- rubric: 0-2 on SciGenBench's five dimensions for a figure against its problem text.
An unparseable reply is never guessed: it comes back with ``ok`` False and its text, and
callers count it as wrong and report it.

The backends (local transformers model, OpenAI-compatible endpoint) are in
``judge_backends``; every protocol takes anything with ``.generate(parts) -> str``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from . import _comfy
from .errors import ScienceT2IError
from .judge_answers import (SCORE_KEYS, Parsed, final_answer_text, match_free_answer,
                            parse_option, parse_pair_choice, parse_scores, parse_verdict)

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


# ----------------------------------------------------------------------------- nodes

JUDGE_TYPE = "SCIENCE_LMM"  # a multimodal or language model behind one backend


def _pil_list(image: Any, what: str) -> list:
    from .images import as_rgb_batch, to_pil
    batch = as_rgb_batch(image, what)
    return [to_pil(batch[i]) for i in range(batch.shape[0])]


class VLMJudgeLoaderNode:
    """A multimodal judge: a local model from models/vlm (or a Hub id), or a model behind an
    OpenAI-compatible endpoint (vLLM, Ollama, LM Studio, ``transformers serve``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        # text-only language models (models/LLM) serve ImgCoder, which needs no images
        from .judge_backends import list_local_models
        local = list_local_models() or ["(put a model folder in models/vlm)"]
        return {"required": {
            "backend": (["local", "openai"], {"default": "local"}),
            "local_model": (local, {"tooltip": "backend local: a folder in models/vlm, or "
                                               "LLM/<folder in models/LLM> (text only, for "
                                               "ImgCoder)"}),
            "remote_model": ("STRING", {"default": "", "tooltip": "model name the endpoint "
                                        "serves, or a Hub id for backend local"}),
            "base_url": ("STRING", {"default": "http://127.0.0.1:8000/v1",
                                    "tooltip": "OpenAI-compatible endpoint (backend openai)"}),
            "api_key_env": ("STRING", {"default": "OPENAI_API_KEY", "tooltip":
                                       "environment variable holding the key (the key itself "
                                       "is never stored in the workflow)"}),
            "timeout": ("FLOAT", {"default": 120.0, "min": 1.0, "max": 3600.0}),
        }}

    RETURN_TYPES = (JUDGE_TYPE,)
    RETURN_NAMES = ("judge",)
    FUNCTION = "load"
    CATEGORY = "Science-T2I/Judges"

    def load(self, backend, local_model, remote_model, base_url, api_key_env, timeout):
        from .judge_backends import LocalBackend, OpenAIBackend
        if backend == "local":
            name = remote_model.strip() or local_model
            if name.startswith("(put a model"):
                raise ScienceT2IError("no local judge model: put an image-text-to-text model "
                                      f"folder in {_comfy.default_folder('vlm')} or type a Hub "
                                      "id in remote_model.")
            return (LocalBackend(name),)  # "LLM/<folder>" resolves in models/LLM
        if backend == "openai":
            if not remote_model.strip():
                raise ScienceT2IError("backend openai needs remote_model: the model name the "
                                      f"endpoint at {base_url} serves.")
            return (OpenAIBackend(remote_model.strip(), base_url.strip(),
                                  api_key_env=api_key_env.strip() or "OPENAI_API_KEY",
                                  timeout=float(timeout)),)
        raise ScienceT2IError(f"unknown judge backend {backend!r}; use local or openai.")


class ScienceJudgeNode:
    """Pairwise: which of image A and image B shows the prompt's scientific outcome.

    ``both_orders`` asks twice with the images swapped (the paper's protocol); when the two
    answers disagree the verdict is "tie" (position bias, not a preference)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "judge": (JUDGE_TYPE,),
            "image_a": ("IMAGE",),
            "image_b": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": "an unripe apple"}),
            "both_orders": ("BOOLEAN", {"default": True}),
        }}

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("which", "reason")
    FUNCTION = "judge"
    CATEGORY = "Science-T2I/Judges"
    OUTPUT_NODE = True

    def judge(self, judge, image_a, image_b, prompt, both_orders):
        if not prompt.strip():
            raise ScienceT2IError("prompt is empty; give the (implicit) prompt the images were "
                                  "generated for.")
        a_list, b_list = _pil_list(image_a, "image_a"), _pil_list(image_b, "image_b")
        if len(a_list) != len(b_list) and 1 not in (len(a_list), len(b_list)):
            raise ScienceT2IError(f"image_a has {len(a_list)} images and image_b "
                                  f"{len(b_list)}; give equal batches or one image on a side.")
        n = max(len(a_list), len(b_list))
        verdicts, reasons = [], []
        with _comfy.Progress(n * (2 if both_orders else 1), desc="science judge") as bar:
            for i in range(n):
                a, b = a_list[min(i, len(a_list) - 1)], b_list[min(i, len(b_list) - 1)]
                forward = judge_pair(judge, a, b, prompt)
                bar.update(1)
                _comfy.check_interrupt()
                picks = [{1: "A", 2: "B"}.get(forward.value)]
                texts = [forward.text.strip()]
                if both_orders:
                    reverse = judge_pair(judge, b, a, prompt)
                    bar.update(1)
                    picks.append({1: "B", 2: "A"}.get(reverse.value))
                    texts.append(reverse.text.strip())
                verdicts.append(_verdict(picks))
                reasons.append(" | ".join(texts))
        which = "\n".join(verdicts)
        reason = "\n".join(reasons)
        return {"ui": {"text": [f"{which}\n{reason}"]}, "result": (which, reason)}


def _verdict(picks: list[str | None]) -> str:
    if any(p is None for p in picks):
        return "unparseable"
    return picks[0] if len(set(picks)) == 1 else "tie"


class VisualQuizNode:
    """Ask a question about an image; with choices the answer is an option letter, and with
    a correct answer the node says whether the judge got it right (SciGenBench's inverse
    validation, one image at a time)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "judge": (JUDGE_TYPE,),
            "image": ("IMAGE",),
            "question": ("STRING", {"multiline": True, "default": ""}),
        }, "optional": {
            "choices": ("STRING", {"multiline": True, "default": "",
                                   "tooltip": "one option per line (A. ..., B. ...); empty for "
                                              "a free-form answer"}),
            "correct_answer": ("STRING", {"default": "", "tooltip": "option letter or the "
                                          "expected answer; empty to only ask"}),
        }}

    RETURN_TYPES = ("STRING", "BOOLEAN", "STRING")
    RETURN_NAMES = ("answer", "correct", "reply")
    FUNCTION = "ask"
    CATEGORY = "Science-T2I/Judges"
    OUTPUT_NODE = True

    def ask(self, judge, image, question, choices="", correct_answer=""):
        if not question.strip():
            raise ScienceT2IError("question is empty; type the question to ask about the image.")
        pil = _pil_list(image, "image")
        if len(pil) > 1:
            log.warning("Visual Quiz: the image batch holds %d images; asking about the first",
                        len(pil))
        quiz = Quiz(question, parse_choice_lines(choices), correct_answer.strip())
        reply = ask_quiz(judge, pil[0], quiz)
        if quiz.options:
            parsed = parse_option(reply, dict(quiz.options))
        else:
            final = final_answer_text(reply)
            parsed = Parsed(final or None, "" if final else "the reply is empty", reply)
        answer = str(parsed.value) if parsed.ok else "unparseable"
        correct = False
        if quiz.answer:
            correct, _ = grade_quiz(reply, quiz)
        summary = f"answer: {answer}" + (f"  correct: {correct}" if quiz.answer else "")
        return {"ui": {"text": [summary + "\n" + reply.strip()]},
                "result": (answer, bool(correct), reply)}


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_VLMJudgeLoader": VLMJudgeLoaderNode,
    "ScienceT2I_ScienceJudge": ScienceJudgeNode,
    "ScienceT2I_VisualQuiz": VisualQuizNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_VLMJudgeLoader": "VLM Judge Loader",
    "ScienceT2I_ScienceJudge": "Science Judge (A or B)",
    "ScienceT2I_VisualQuiz": "Visual Quiz",
}
