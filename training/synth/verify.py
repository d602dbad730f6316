"""Which images become training data. Each generated image is checked, in this order:
1. it exists (the generator made it);
2. the inverse quiz: a judge answers each of the record's questions from the image alone;
   the image is kept when at least ``min_quiz`` of them are right (default all: SciGenBench's
   "perfect image");
3. optional thresholds: the judge's mean rubric score (0-2 on SciGenBench's five
   dimensions) and SciScore against the problem text;
4. near-duplicates: an image whose 64-bit difference hash is within ``dedup_distance`` bits
   of an image already kept, with the same coarse colours (4x4 means within 24 levels), is
   dropped (the first in record order stays);
5. answers given away: where the figure's code is known (ImgCoder), a question whose correct
   option appears as a text string drawn in the figure is left out of the rows (the image's
   other questions stay) - a model would learn to read the answer, not to reason to it.
Judge replies are cached (a re-run asks only what did not arrive); a judge call that failed
after its retries drops the image for this run, with that reason.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ...nodes.errors import ScienceT2IError
from ..eval.judge_cache import JudgeCache
from ..eval.scigen.judging import judge_images
from .sources import Drawn


@dataclass(frozen=True)
class VerifyOptions:
    min_quiz: float = 1.0
    min_judge: float | None = None       # mean of the five 0-2 rubric scores
    min_sciscore: float | None = None
    dedup_distance: int = 4              # bits of 64; negative: no deduplication
    drop_leaks: bool = True
    workers: int = 4

    def check(self) -> None:
        if not 0 < self.min_quiz <= 1:
            raise ScienceT2IError(f"--min-quiz is a share of the questions, in (0, 1]; got "
                                  f"{self.min_quiz}.")
        if self.min_judge is not None and not 0 <= self.min_judge <= 2:
            raise ScienceT2IError(f"--min-judge is a mean rubric score, 0-2; got {self.min_judge}.")
        if self.workers < 1:
            raise ScienceT2IError(f"--workers must be >= 1; got {self.workers}.")


@dataclass
class Verdict:
    id: str
    kept: bool
    reason: str = ""                         # why it was dropped
    quiz: list[dict] = field(default_factory=list)
    scores: dict | None = None
    sciscore: float | None = None
    leaked: dict[int, str] = field(default_factory=dict)   # question index -> leaked answer
    duplicate_of: str | None = None


def verify_images(records: Sequence[Any], drawn: dict[str, Drawn], judge: Any, cache: JudgeCache,
                  options: VerifyOptions, sciscore: Any = None) -> list[Verdict]:
    """A verdict per record, in record order (see the module doc)."""
    from ..core.datasets import ImageRef
    metrics = ["quiz"] + (["judge"] if options.min_judge is not None else [])
    todo = [r for r in records if drawn[r.id].path is not None]
    refs = [ImageRef(path=drawn[r.id].path, label=str(drawn[r.id].path)) for r in todo]
    rows = {row["id"]: row for row in judge_images(todo, refs, judge, cache, metrics=metrics,
                                                   workers=options.workers, desc="verify")}
    sciscores = _sciscores(todo, drawn, sciscore) if options.min_sciscore is not None else {}
    verdicts, hashes = [], {}
    for r in records:
        v = _judged(r, drawn[r.id], rows.get(r.id), options, sciscores.get(r.id))
        if v.kept and options.dedup_distance >= 0:
            h = image_signature(drawn[r.id].path)
            twin = next((i for i, other in hashes.items()
                         if near_duplicates(h, other, options.dedup_distance)), None)
            if twin is not None:
                v.kept, v.duplicate_of = False, twin
                v.reason = f"a near-duplicate of {twin}'s image"
            else:
                hashes[r.id] = h
        if v.kept and options.drop_leaks and drawn[r.id].code:
            v.leaked = leaked_answers(drawn[r.id].code, r.quizzes)
            if len(v.leaked) == len(r.quizzes):
                v.kept, v.reason = False, "every answer is written in the figure"
        verdicts.append(v)
    return verdicts


def _judged(record: Any, drawn: Drawn, row: dict | None, options: VerifyOptions,
            sciscore: float | None) -> Verdict:
    if drawn.path is None:
        return Verdict(record.id, False, f"not generated: {drawn.error or 'no image'}")
    if row is None or row["status"] != "ok":
        error = (row or {}).get("error", "not judged")
        return Verdict(record.id, False, f"judge call failed ({error}); run again to retry")
    quiz = row.get("quiz", [])
    right = sum(a["correct"] for a in quiz)
    v = Verdict(record.id, True, quiz=quiz, scores=row.get("scores"), sciscore=sciscore)
    if not quiz:
        v.kept, v.reason = False, "the record has no questions"
    elif right < options.min_quiz * len(quiz) - 1e-9:
        v.kept, v.reason = False, f"inverse quiz: {right} of {len(quiz)} answered right"
    elif options.min_judge is not None:
        mean = None if not v.scores else sum(v.scores.values()) / len(v.scores)
        if mean is None or mean < options.min_judge:
            v.kept = False
            v.reason = ("judge scores unreadable" if mean is None else
                        f"judge score {mean:.2f} below {options.min_judge}")
    if v.kept and options.min_sciscore is not None:
        if sciscore is None:
            v.kept, v.reason = False, "no SciScore for the image"
        elif sciscore < options.min_sciscore:
            v.kept, v.reason = False, f"SciScore {sciscore:.2f} below {options.min_sciscore}"
    return v


def _sciscores(records: Sequence[Any], drawn: dict[str, Drawn], scorer: Any) -> dict[str, float]:
    from PIL import Image

    from ...nodes.core import from_pil
    if not records:
        return {}
    # one IMAGE tensor per figure: their sizes may differ
    images = [from_pil(Image.open(drawn[r.id].path).convert("RGB")) for r in records]
    scores = scorer.score(images, [r.text for r in records])
    return {r.id: float(s) for r, s in zip(records, scores)}


def image_signature(path: Path | str) -> tuple[int, bytes]:
    """(64-bit difference hash, 4x4 mean colours). The hash (a 9x8 grey thumbnail, one bit
    per left-right brightness step) matches images of the same layout whatever their size or
    compression; it cannot tell a red disc from a green one, which in a science figure may
    be the point, so the coarse colours must match too."""
    from PIL import Image
    image = Image.open(path).convert("RGB")
    px = list(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS).getdata())
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] > px[row * 9 + col + 1])
    colours = image.resize((4, 4), Image.Resampling.BOX).tobytes()
    return bits, colours


def near_duplicates(a: tuple[int, bytes], b: tuple[int, bytes], distance: int,
                    colour_tolerance: int = 24) -> bool:
    """Hashes within ``distance`` bits and every coarse colour within the tolerance."""
    return (bin(a[0] ^ b[0]).count("1") <= distance
            and max(abs(x - y) for x, y in zip(a[1], b[1])) <= colour_tolerance)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def figure_strings(code: str) -> list[str]:
    """The text a figure's code draws: its string constants (f-strings' fixed parts too)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [_norm(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.strip()]


def leaked_answers(code: str, quizzes: Sequence[Any]) -> dict[int, str]:
    """Questions whose correct option (its text, 2+ characters) appears as a whole phrase in
    a string the figure draws."""
    from ...nodes.judges import gold_letter
    strings = figure_strings(code)
    out = {}
    for k, quiz in enumerate(quizzes):
        answer = quiz.options.get(gold_letter(quiz) or "", "") if quiz.options else quiz.answer
        answer = _norm(answer)
        if len(answer) < 2:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(answer) + r"(?!\w)")
        if any(pattern.search(s) for s in strings):
            out[k] = answer
    return out
