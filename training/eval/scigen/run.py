"""The whole SciGenBench evaluation behind ``science-t2i eval-scigen``: the records chosen,
every image set judged (quizzes, rubric) and measured (PSNR/SSIM/CLIP/FID), the report
written (``scigen_eval.json``, ``.md`` and the per-type chart)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....nodes import _comfy
from ....nodes.errors import ScienceT2IError
from ...core.preflight import require_modules
from ...core.readers import read_text
from ..judge_cache import JudgeCache
from ..reports import bar_chart_png, charts_available, write_report
from .data import SciGenRecord, attach_real_images, load_scigen_records, parse_image_sets
from .judging import METRICS, add_standard_metrics, image_sources, judge_image_set
from .metrics import DEFAULT_CLIP
from .summary import scigen_markdown, summarise, summarise_groups, unparseable


@dataclass
class ScigenOptions:
    """What to evaluate and how (the command's options)."""
    records: str
    split: str | None = None
    source: str | None = None                 # keep only records of this source
    real_images: str | None = None            # folder of real figures named by record id
    exclude_ids: str | None = None            # file of record ids to leave out
    images: list[str] = field(default_factory=list)   # [NAME=]DIR per image set
    generated_column: str | None = None       # the records carry the images in this column
    real_column: str | None = None
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    workers: int = 1
    grader: str = "parse"                     # free-form answers: parse | judge
    missing: str = "fail"                     # a record without an image: fail | skip
    clip_model: str = DEFAULT_CLIP
    fid_weights: str | None = None
    fid: bool = True
    device: str = "auto"
    limit: int | None = None

    @property
    def judged(self) -> list[str]:
        return [m for m in self.metrics if m in ("quiz", "judge")]


def parse_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ScienceT2IError(f"--metrics {text!r}: use a comma list of {METRICS}.")
    return metrics


def check_options(opts: ScigenOptions, has_judge: bool) -> None:
    """Refuse, before any work, options that cannot give a result."""
    if opts.judged and not has_judge:
        raise ScienceT2IError(f"--metrics {','.join(opts.judged)} needs a judge: pass --judge "
                              "local:MODEL or --judge openai:MODEL --base-url URL, or "
                              "--metrics standard.")
    if opts.workers < 1:
        raise ScienceT2IError(f"--workers must be at least 1, got {opts.workers}.")
    if not opts.images and not opts.generated_column:
        raise ScienceT2IError("nothing to evaluate: pass --images DIR (images named by record "
                              "id) or --generated-column COLUMN (images inside the records).")
    if opts.limit is not None and opts.limit < 1:
        raise ScienceT2IError(f"--limit must be at least 1, got {opts.limit}.")


def image_sets(opts: ScigenOptions) -> dict[str, Path | None]:
    """Image set name -> its folder (None: the images inside the records)."""
    sets: dict[str, Path | None] = parse_image_sets(opts.images)
    if opts.generated_column:
        name = Path(opts.records).name + (f"/{opts.split}" if opts.split else "")
        sets = {name: None, **sets}
    return sets


def select_records(opts: ScigenOptions, say: Callable[[str], None] = print
                   ) -> list[SciGenRecord]:
    """The records to evaluate: read, excluded ids left out, real figures attached, cut to
    ``limit``."""
    records = load_scigen_records(opts.records, opts.split, opts.source,
                                  real_key=opts.real_column,
                                  generated_key=opts.generated_column)
    if opts.exclude_ids:
        drop = {line.strip() for line in read_text(opts.exclude_ids, "--exclude-ids file")
                .splitlines() if line.strip()}
        records = [r for r in records if r.id not in drop]
        if not records:
            raise ScienceT2IError(f"--exclude-ids {opts.exclude_ids} leaves no record.")
    if opts.real_images:
        attached = attach_real_images(records, Path(opts.real_images))
        say(f"real images: {attached} of {len(records)} records found in {opts.real_images}")
    return records[:opts.limit] if opts.limit is not None else records


def _standard_engine(opts: ScigenOptions) -> Any:
    from .metrics import StandardMetrics
    device = str(_comfy.torch_device()) if opts.device == "auto" else opts.device
    return StandardMetrics(clip_model=opts.clip_model, fid_weights=opts.fid_weights,
                           fid=opts.fid, device=device)


def evaluate_set(records: list[SciGenRecord], folder: Path | None, opts: ScigenOptions,
                 backend: Any, cache: JudgeCache, standard: bool, desc: str) -> dict:
    """One image set's rows and summaries."""
    if opts.judged:
        grader = backend if opts.grader == "judge" else None
        rows = judge_image_set(records, folder, backend, cache, metrics=opts.judged,
                               grader=grader, workers=opts.workers, desc=desc)
    else:
        rows = [{"id": r.id, "image_type": r.image_type, "subject": r.subject,
                 "status": "ok" if ref else "missing", "image": ref.label if ref else None}
                for r, ref in zip(records, image_sources(records, folder))]
    std_summary = add_standard_metrics(rows, records, folder, _standard_engine(opts)) \
        if standard else None
    quizzes = {r.id: len(r.quizzes) for r in records}
    kw = {"missing": opts.missing, "quizzes_of": quizzes.__getitem__}
    where = str(folder) if folder else f"{opts.records} ({opts.generated_column})"
    return {"folder": where, "overall": summarise(rows, **kw),
            "by_image_type": summarise_groups(rows, "image_type", **kw),
            "by_subject": summarise_groups(rows, "subject", **kw),
            "standard": std_summary, "unparseable": unparseable(rows),
            "failures": [{"id": r["id"], "status": r["status"], "error": r.get("error", "")}
                         for r in rows if r["status"] != "ok"],
            "records": rows}


def run_scigen(opts: ScigenOptions, backend: Any, out: Path,
               say: Callable[[str], None] = print) -> tuple[dict, str, list[Path]]:
    """Evaluate every image set; returns (the report's data, its Markdown, the files
    written into ``out``)."""
    check_options(opts, backend is not None)
    sets = image_sets(opts)
    records = select_records(opts, say)
    with_real = sum(r.real_image is not None for r in records)
    standard = "standard" in opts.metrics and with_real > 0
    if "standard" in opts.metrics and not with_real:
        say("note: no record has a real image; PSNR/SSIM/CLIP/FID are skipped")
    if standard:
        require_modules(["torchmetrics"] + (["torch_fidelity"] if opts.fid else []),
                        "the standard metrics (PSNR/SSIM/CLIP/FID)",
                        ", or leave them out with --metrics quiz,judge")
    charts = charts_available()
    cache = JudgeCache(out / "judge_cache.jsonl")
    results = {name: evaluate_set(records, folder, opts, backend, cache, standard,
                                  f"judging {name}") for name, folder in sets.items()}
    title = f"SciGenBench evaluation of {opts.records}" + (f" ({opts.split})" if opts.split
                                                           else "")
    markdown = scigen_markdown(results, title)
    chart = None
    if charts and "quiz" in opts.metrics:
        chart = bar_chart_png({n: {t: (v["r_inv"] or 0.0) * 100
                                   for t, v in r["by_image_type"].items()}
                               for n, r in results.items()}, title, "R_inv (%)")
    data = {"records_file": str(opts.records), "split": opts.split, "source": opts.source,
            "judge": backend.name if backend else None, "metrics": opts.metrics,
            "missing": opts.missing, "grader": opts.grader, "records": len(records),
            "cache": {"file": str(cache.path), "replies": len(cache), "reused": cache.hits},
            "sets": results}
    paths = write_report(out, "scigen_eval", data, markdown, chart, setting="--out")
    return data, markdown, paths
