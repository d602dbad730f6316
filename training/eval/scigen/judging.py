"""SciGenBench evaluation of generated scientific images.

Per record and image set (a folder of ``<record id>.png``):
- inverse validation: each of the record's quizzes is asked about the generated image alone;
  R_inv is the share of quizzes answered correctly, and the perfect-image rate the share of
  images whose quizzes are all right (SciGenBench's quiz.py prints both);
- LMM-as-judge: 0-2 on the five dimensions against the record's problem text;
- standard metrics, on records with a real image: PSNR, SSIM, CLIP score and FID.
Unparseable replies count as wrong (quiz) or 0 (rubric) and are listed with their text. A
missing or undecodable generated image is a failure (all quizzes wrong, all scores 0) unless
``missing="skip"``, SciGenBench's scripts' behaviour, which leaves such records out. Judge
calls that fail after their retries leave the record out of the numbers and are listed; a
re-run asks them again (the cache keeps every reply that arrived).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ....nodes import _comfy
from ....nodes.errors import ScienceT2IError
from ....nodes.judges import (PROMPT_VERSION, SCORE_KEYS, Parsed, ask_quiz, grade_quiz,
                              parse_scores, rate_figure)
from ....nodes.lmm import LMMError
from ...core.datasets import ImageRef
from ...core.progress import EtaLog
from ..judge_cache import JudgeCache, cache_key, image_digest
from .data import SciGenRecord, find_generated

log = logging.getLogger(__name__)

METRICS = ("quiz", "judge", "standard")


def image_sources(records: Sequence[SciGenRecord], images: Path | None) -> list:
    """The image to evaluate per record: ``<id>.png`` in the folder ``images``, or (None) the
    records' own generated image; None where there is none."""
    if images is None:
        return [r.generated for r in records]
    out = []
    for r in records:
        path = find_generated(Path(images), r.id)
        out.append(ImageRef(path=path, label=str(path)) if path else None)
    return out


def judge_record(record: SciGenRecord, ref: ImageRef | None, backend: Any, cache: JudgeCache,
                 *, metrics: Sequence[str], grader: Any = None) -> dict:
    """One record's quiz answers and rubric scores (no aggregation); never raises for a bad
    image or a failed judge call, which come back as the row's status."""
    row: dict[str, Any] = {"id": record.id, "image_type": record.image_type,
                           "subject": record.subject, "status": "ok", "image": None}
    if ref is None:
        row.update(status="missing", error="no generated image for this record")
        return row
    row["image"] = ref.label or str(ref.path)
    try:
        image = ref.open()
        digest = image_digest(ref)
    except (ScienceT2IError, OSError) as exc:  # undecodable: a failure like a missing one
        row.update(status="missing", error=str(exc))
        return row
    try:
        if "quiz" in metrics:
            answers = []
            for k, quiz in enumerate(record.quizzes):
                key = cache_key("quiz", record.id, k, quiz.question, digest, backend.name,
                                PROMPT_VERSION)
                reply = cache.ask(key, lambda q=quiz: ask_quiz(backend, image, q),
                                  kind="quiz", record=record.id, judge=backend.name)
                correct, parsed = grade_quiz(reply, quiz, grader=grader)
                answers.append(_answer_row(correct, parsed, quiz.answer))
            row["quiz"] = answers
        if "judge" in metrics:
            key = cache_key("rubric", record.id, record.text, digest, backend.name,
                            PROMPT_VERSION)
            reply = cache.ask(key, lambda: _rubric_reply(backend, image, record.text),
                              kind="rubric", record=record.id, judge=backend.name)
            parsed = parse_scores(reply, SCORE_KEYS)
            row["scores"] = parsed.value if parsed.ok else None
            if not parsed.ok:
                row["rubric_unparsed"] = {"reason": parsed.reason, "reply": reply}
    except LMMError as exc:  # a call that failed after its retries: asked again next run
        row.update(status="judge_error", error=str(exc))
    return row


def _rubric_reply(backend: Any, image: Any, text: str) -> str:
    return rate_figure(backend, image, text).text


def _answer_row(correct: bool, parsed: Parsed, gold: str) -> dict:
    out = {"correct": bool(correct), "answer": parsed.value, "gold": gold}
    if not parsed.ok:
        out.update(reason=parsed.reason, reply=parsed.text)
    return out


def judge_image_set(records: Sequence[SciGenRecord], images: Path | None, backend: Any,
                    cache: JudgeCache, *, metrics: Sequence[str], grader: Any = None,
                    workers: int = 1, desc: str = "scigen") -> list[dict]:
    """Rows of ``judge_record`` for every record, in record order, the images from the folder
    ``images`` or (None) the records (``workers`` > 1 asks several records at once, for
    remote judges)."""
    return judge_images(records, image_sources(records, images), backend, cache,
                        metrics=metrics, grader=grader, workers=workers, desc=desc)


def judge_images(records: Sequence[SciGenRecord], refs: Sequence[ImageRef | None],
                 backend: Any, cache: JudgeCache, *, metrics: Sequence[str],
                 grader: Any = None, workers: int = 1, desc: str = "scigen") -> list[dict]:
    """``judge_record`` of each record with its image (``refs``, in record order), with
    progress and an ETA; ``workers`` records at once."""
    todo = list(zip(records, refs))
    eta = EtaLog(len(todo), desc)
    rows: list[dict | None] = [None] * len(todo)
    with _comfy.Progress(len(todo), desc=desc) as bar:
        def one(i: int) -> None:
            rows[i] = judge_record(todo[i][0], todo[i][1], backend, cache, metrics=metrics,
                                   grader=grader)
        if workers <= 1:
            for i in range(len(todo)):
                one(i)
                bar.update(1)
                eta.step()
                _comfy.check_interrupt()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(one, range(len(todo))):
                    bar.update(1)
                    eta.step()
    return [r for r in rows if r is not None]


def add_standard_metrics(rows: list[dict], records: Sequence[SciGenRecord],
                         images: Path | None, metrics_engine: Any) -> dict:
    """PSNR / SSIM / CLIP per row whose record has a real image; the engine's summary."""
    refs = {r.id: ref for r, ref in zip(records, image_sources(records, images))}
    by_id = {r.id: r for r in records}
    for row in rows:
        rec = by_id[row["id"]]
        if rec.real_image is None or row["status"] == "missing" or refs[rec.id] is None:
            continue
        values = metrics_engine.add(rec.id, refs[rec.id].open(), rec.real_image.open(),
                                    rec.text)
        row.update({k: v for k, v in values.items() if v is not None})
    return metrics_engine.summary()
