"""The benchmark's rubric judge over a text-to-image run: every image of ``RUN/{ip,ep,sp}`` is
judged against its record's ``scene_scoring`` and ``real_scoring``
(``nodes/judges/science_rubric``), several requests at once, each reply cached
(``judge_cache``: a re-run after a kill asks only what is missing), and the scores reported
out of 100 per prompt kind, with the implicit-explicit gap, per category and per task.
A judge call that fails after its retries and a reply that cannot be read are both counted
and listed, and left out of the means.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ...nodes import _comfy
from ...nodes.errors import ScienceT2IError
from ...nodes.judges.science_rubric import (RUBRIC_JUDGE_PROMPT, aggregate, parse_rubric,
                                            rubric_prompt)
from ...nodes.lmm import LMMError
from .judge_cache import JudgeCache, cache_key
from .science_t2i import KINDS, collect_generated

KIND_NAMES = {"ip": "implicit", "ep": "explicit", "sp": "superficial"}


def rubric_gaps(records: Sequence[Any]) -> tuple[list[int], list[str]]:
    """The records lacking a rubric field, and which of the two fields some record lacks."""
    lacking = [r.index for r in records if not (r.scene_scoring and r.real_scoring)]
    fields = [f for f in ("scene_scoring", "real_scoring")
              if any(not getattr(r, f) for r in records)]
    return lacking, fields


def rubric_gap_message(records: Sequence[Any]) -> str | None:
    """What the records lack for the rubric judge, or None when every record has both."""
    lacking, fields = rubric_gaps(records)
    if not lacking:
        return None
    return (f"{len(lacking)} of {len(records)} records (e.g. record {lacking[0]}) lack "
            f"{' and '.join(fields)}, the rubric fields the judge grades against (a "
            "Science-T2I test set has them, the trainset has none)")


def check_rubric_fields(records: Sequence[Any]) -> None:
    """Refuse records of which none has both rubric fields: there is nothing to judge."""
    lacking, _ = rubric_gaps(records)
    if records and len(lacking) == len(records):
        raise ScienceT2IError(f"{rubric_gap_message(records)}; use a Science-T2I test set, "
                              "or leave out --judge to score with SciScore only.")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def judge_run(run_dir: Path, records: Sequence[Any], backend: Any, *,
              cache: JudgeCache | None = None, template: str | None = None,
              concurrency: int = 4) -> dict:
    """Judge every image of ``run_dir``; returns the per-kind reports and per-image rows."""
    if not records:
        raise ScienceT2IError("the rubric judge needs the records (--dataset) for their "
                              "scene_scoring and real_scoring.")
    check_rubric_fields(records)
    if concurrency < 1:
        raise ScienceT2IError(f"--concurrency must be >= 1; got {concurrency}.")
    by_index = {r.index: r for r in records}
    items = collect_generated(Path(run_dir), records)
    cache = cache if cache is not None else JudgeCache(None)
    prompt_version = hashlib.sha256((template or RUBRIC_JUDGE_PROMPT).encode()).hexdigest()[:12]

    def one(item: dict) -> dict:
        index = item.get("index")
        failed = {"file": str(item["file"]), "kind": item["kind"], "score": None,
                  "id": f"{item['kind']}/{Path(item['file']).name}", "index": index}
        if index not in by_index:
            return {**failed, "error": "no record for this image (name it after the record "
                                       "index, or give \"index\" in metadata.jsonl)"}
        rec = by_index[index]
        if not (rec.scene_scoring and rec.real_scoring):   # counted, never silently skipped
            return {**failed, "error": f"record {index} has no scene_scoring/real_scoring to "
                                       "judge by"}
        question = rubric_prompt(rec.implicit_prompts[0], rec.scene_scoring, rec.real_scoring,
                                 template)
        key = cache_key("rubric", index, item["kind"], _file_digest(item["file"]),
                        backend.name, prompt_version)
        row = {"file": str(item["file"]), "kind": item["kind"], "id": f"{item['kind']}/"
               f"{Path(item['file']).name}", "index": index, "category": rec.category,
               "law": rec.task}
        try:
            from PIL import Image
            reply = cache.ask(key, lambda: backend.generate(
                [Image.open(item["file"]).convert("RGB"), question], max_new_tokens=512),
                kind="rubric", record=index, judge=backend.name)
        except LMMError as exc:
            return {**row, "score": None, "error": str(exc)}
        parsed = parse_rubric(reply)
        if not parsed.ok:
            return {**row, "score": None, "error": f"unreadable reply: {parsed.reason}",
                    "reply": reply[:500]}
        v = parsed.value
        return {**row, "score": v.score, "scene": v.scene, "reality": v.reality,
                "overall": v.overall, "description": v.description}

    rows: list[dict] = []
    with _comfy.Progress(len(items), desc=f"rubric judge {backend.name}") as bar, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        for row in pool.map(one, items):
            rows.append(row)
            bar.update(1)
    kinds = {KIND_NAMES[k]: aggregate(r for r in rows if r["kind"] == k) for k in KINDS}
    ip, ep = kinds["implicit"]["score"], kinds["explicit"]["score"]
    return {"judge": backend.name, "kinds": kinds,
            "gap": None if ip is None or ep is None else round(ep - ip, 2),
            "failures": [{"id": r["id"], "error": r["error"]} for r in rows if "error" in r],
            "rows": rows}


def rubric_markdown(result: dict) -> str:
    lines = [f"### Rubric judge ({result['judge']}): score out of 100", "",
             "| prompts | score | judged | failures |", "|---|---|---|---|"]
    for name, rep in result["kinds"].items():
        score = "-" if rep["score"] is None else f"{rep['score']:.1f}"
        lines.append(f"| {name} | {score} | {rep['judged']} | {rep['failures']} |")
    if result["gap"] is not None:
        lines += ["", f"explicit - implicit gap: {result['gap']:.1f} points"]
    laws = sorted({law for rep in result["kinds"].values() for law in rep["by_law"]})
    if laws:
        lines += ["", "| task | " + " | ".join(result["kinds"]) + " |",
                  "|---|" + "---|" * len(result["kinds"])]
        for law in laws:
            cells = []
            for rep in result["kinds"].values():
                s = rep["by_law"].get(law, {}).get("score")
                cells.append("-" if s is None else f"{s:.1f}")
            lines.append(f"| {law} | " + " | ".join(cells) + " |")
    if result["failures"]:
        lines += ["", f"{len(result['failures'])} image(s) not judged (left out of the means):"]
        lines += [f"- {f['id']}: {f['error']}" for f in result["failures"][:20]]
    return "\n".join(lines) + "\n"
