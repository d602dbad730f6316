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
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..nodes import _comfy
from ..nodes.errors import ScienceT2IError
from ..nodes.judge import PROMPT_VERSION, ask_quiz, grade_quiz, rate_figure
from ..nodes.judge_answers import SCORE_KEYS, Parsed, parse_scores
from ..nodes.judge_backends import JudgeError
from .judge_cache import JudgeCache, cache_key, image_digest
from .datasets import ImageRef
from .scigen_data import SciGenRecord, find_generated

log = logging.getLogger(__name__)

METRICS = ("quiz", "judge", "standard")
SHORT = {"Correctness_Fidelity": "C&F", "Layout_Precision": "L&P",
         "Readability_Occlusion": "R&O", "Scientific_Plausibility": "SP",
         "Expressiveness_Richness": "E&R"}


class EtaLog:
    """A progress line with the ETA in the log every ``every`` seconds (the bar shows it
    too, but logs of long headless runs keep only lines)."""

    def __init__(self, total: int, what: str, every: float = 30.0):
        self.total, self.what, self.every = total, what, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            rate = (now - self.start) / self.done
            log.info("%s: %d/%d, %.0f s elapsed, ETA %.0f s", self.what, self.done, self.total,
                     now - self.start, rate * (self.total - self.done))
            self.last = now


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
    except JudgeError as exc:  # a call that failed after its retries: asked again next run
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
    todo = list(zip(records, image_sources(records, images)))
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


# ---------------------------------------------------------------- aggregation

def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(rows: Sequence[dict], *, missing: str = "fail", quizzes_of: Callable[[str], int]
              ) -> dict:
    """R_inv, perfect-image rate, the five judge means and the pixel metrics of ``rows``.

    ``missing="fail"``: a record without a usable image counts its quizzes wrong and scores
    0 on every dimension; ``"skip"`` leaves it out. Rows whose judge failed are left out.
    """
    if missing not in ("fail", "skip"):
        raise ScienceT2IError(f"missing must be 'fail' or 'skip', got {missing!r}.")
    correct = total = perfect = images = 0
    dims: dict[str, list[float]] = {k: [] for k in SCORE_KEYS}
    pixel: dict[str, list[float]] = {"psnr": [], "ssim": [], "clip": []}
    counts = {"records": len(rows), "missing": 0, "judge_error": 0, "quiz_unparsed": 0,
              "rubric_unparsed": 0}
    for row in rows:
        status = row["status"]
        if status == "judge_error":
            counts["judge_error"] += 1
            continue
        if status == "missing":
            counts["missing"] += 1
            if missing == "skip":
                continue
            n = quizzes_of(row["id"])
            total += n
            images += 1
            for k in SCORE_KEYS:
                dims[k].append(0.0)
            continue
        if "quiz" in row:
            answers = row["quiz"]
            right = sum(a["correct"] for a in answers)
            correct += right
            total += len(answers)
            images += 1
            perfect += int(right == len(answers))
            counts["quiz_unparsed"] += sum(1 for a in answers if "reason" in a)
        if "scores" in row or "rubric_unparsed" in row:
            scores = row.get("scores")
            if scores is None:
                counts["rubric_unparsed"] += 1
            for k in SCORE_KEYS:
                dims[k].append(float(scores[k]) if scores else 0.0)
        for k in pixel:
            if row.get(k) is not None and math.isfinite(row[k]):
                pixel[k].append(float(row[k]))
    out: dict[str, Any] = {
        "r_inv": correct / total if total else None, "quizzes": total,
        "quizzes_correct": correct,
        "perfect_image_rate": perfect / images if images else None,
        "judge": {k: _mean(v) for k, v in dims.items()},
        "judge_mean": _mean([x for v in dims.values() for x in v]),
        **{k: _mean(v) for k, v in pixel.items()}, **counts}
    return out


def summarise_groups(rows: Sequence[dict], key: str, **kw: Any) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get(key) or "-", []).append(row)
    return {name: summarise(g, **kw) for name, g in sorted(groups.items())}


def unparseable(rows: Sequence[dict]) -> list[dict]:
    """Every reply that could not be read, with its text, for the report."""
    out = []
    for row in rows:
        for k, a in enumerate(row.get("quiz", [])):
            if "reason" in a:
                out.append({"id": row["id"], "kind": "quiz", "quiz": k, "reason": a["reason"],
                            "reply": a["reply"]})
        if "rubric_unparsed" in row:
            out.append({"id": row["id"], "kind": "rubric", **row["rubric_unparsed"]})
    return out


# ---------------------------------------------------------------- report

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def scigen_markdown(results: dict[str, dict], title: str) -> str:
    """One column per image set overall; per image type and per subject tables per set."""
    sets = list(results)
    lines = [f"# {title}", "",
             "R_inv: share of quiz questions answered correctly from the generated image alone; "
             "perfect: share of images with every question right; judge scores 0-2; PSNR, "
             "SSIM, CLIP and FID on records with a real image.", "", "## Overall", "",
             "| | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    overall = {s: results[s]["overall"] for s in sets}
    std = {s: results[s].get("standard") or {} for s in sets}
    table = [("R_inv (%)", lambda s: _pct(overall[s]["r_inv"])),
             ("perfect images (%)", lambda s: _pct(overall[s]["perfect_image_rate"]))]
    table += [(f"{SHORT[k]} (0-2)", lambda s, k=k: _num(overall[s]["judge"][k]))
              for k in SCORE_KEYS]
    table += [("judge mean", lambda s: _num(overall[s]["judge_mean"])),
              ("PSNR", lambda s: _num(std[s].get("psnr"))),
              ("SSIM", lambda s: _num(std[s].get("ssim"), "{:.4f}")),
              ("CLIP", lambda s: _num(std[s].get("clip"))),
              ("FID", lambda s: _num(std[s].get("fid"))),
              ("records", lambda s: str(overall[s]["records"])),
              ("missing images", lambda s: str(overall[s]["missing"])),
              ("judge errors (left out)", lambda s: str(overall[s]["judge_error"])),
              ("unparseable quiz / rubric replies",
               lambda s: f"{overall[s]['quiz_unparsed']} / {overall[s]['rubric_unparsed']}")]
    lines += [f"| {name} | " + " | ".join(cell(s) for s in sets) + " |" for name, cell in table]
    for section, key in (("image type", "by_image_type"), ("subject", "by_subject")):
        for s in sets:
            groups = results[s][key]
            lines += ["", f"## {s}: per {section}", "",
                      f"| {section} | n | R_inv (%) | perfect (%) | "
                      + " | ".join(SHORT[k] for k in SCORE_KEYS) + " | PSNR | SSIM | CLIP |",
                      "|---|---|---|---|" + "---|" * (len(SCORE_KEYS) + 3)]
            for g, v in groups.items():
                lines.append(f"| {g} | {v['records']} | {_pct(v['r_inv'])} | "
                             f"{_pct(v['perfect_image_rate'])} | "
                             + " | ".join(_num(v["judge"][k]) for k in SCORE_KEYS)
                             + f" | {_num(v['psnr'])} | {_num(v['ssim'], '{:.4f}')} | "
                               f"{_num(v['clip'])} |")
    return "\n".join(lines) + "\n"
