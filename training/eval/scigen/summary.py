"""SciGenBench's numbers from the judged rows: R_inv, the perfect-image rate, the five judge
means and the pixel metrics, overall and per group, and the Markdown report."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

from ....nodes.errors import ScienceT2IError
from ....nodes.judges import SCORE_KEYS
from ..reports import mean_or_none, num, pct

log = logging.getLogger(__name__)


SHORT = {"Correctness_Fidelity": "C&F", "Layout_Precision": "L&P",
         "Readability_Occlusion": "R&O", "Scientific_Plausibility": "SP",
         "Expressiveness_Richness": "E&R"}


# ---------------------------------------------------------------- aggregation

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
        "judge": {k: mean_or_none(v) for k, v in dims.items()},
        "judge_mean": mean_or_none([x for v in dims.values() for x in v]),
        **{k: mean_or_none(v) for k, v in pixel.items()}, **counts}
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
    table = [("R_inv (%)", lambda s: pct(overall[s]["r_inv"])),
             ("perfect images (%)", lambda s: pct(overall[s]["perfect_image_rate"]))]
    table += [(f"{SHORT[k]} (0-2)", lambda s, k=k: num(overall[s]["judge"][k]))
              for k in SCORE_KEYS]
    table += [("judge mean", lambda s: num(overall[s]["judge_mean"])),
              ("PSNR", lambda s: num(std[s].get("psnr"))),
              ("SSIM", lambda s: num(std[s].get("ssim"), "{:.4f}")),
              ("CLIP", lambda s: num(std[s].get("clip"))),
              ("FID", lambda s: num(std[s].get("fid"))),
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
                lines.append(f"| {g} | {v['records']} | {pct(v['r_inv'])} | "
                             f"{pct(v['perfect_image_rate'])} | "
                             + " | ".join(num(v["judge"][k]) for k in SCORE_KEYS)
                             + f" | {num(v['psnr'])} | {num(v['ssim'], '{:.4f}')} | "
                               f"{num(v['clip'])} |")
    return "\n".join(lines) + "\n"
