"""``science-t2i eval-scigen``: SciGenBench's evaluation of generated scientific images."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._model_args import add_endpoint_args, backend_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval-scigen", help="SciGenBench evaluation: inverse quiz validation, LMM judge, "
                            "PSNR/SSIM/CLIP/FID",
        description="Evaluate folders of generated images (<record id>.png) on SciGenBench "
                    "records: R_inv (quizzes answered from the image alone), the five 0-2 "
                    "judge dimensions, and PSNR/SSIM/CLIP score/FID where a record has a real "
                    "image. Tables per image type and subject go to --out as "
                    "scigen_eval.{json,md} and scigen_eval_per_task.png. Judge replies are "
                    "cached in --out, so an interrupted run resumes.")
    p.add_argument("--records", required=True,
                   help="SciGenBench records: save_to_disk folder, parquet or JSON/JSONL")
    p.add_argument("--split", default=None, help="split to evaluate (needed if several)")
    p.add_argument("--source", default=None,
                   help="keep only records whose 'source' is this (scigen, seephys)")
    p.add_argument("--real-images", default=None, metavar="DIR",
                   help="real figures named by record id (<id>.png), for records whose own "
                        "'image' field is empty: SciGenBench's data/seephys_images")
    p.add_argument("--exclude-ids", default=None, metavar="FILE",
                   help="a file of record ids (one per line) to leave out, e.g. SciGenBench's "
                        "perfect_image_seephys.txt for its hard mode")
    p.add_argument("--images", action="append", default=[], metavar="[NAME=]DIR",
                   help="folder of generated images named by record id (an ImgCoder or FLUX "
                        "output folder); repeat to compare several")
    p.add_argument("--generated-column", default=None, metavar="COLUMN",
                   help="the records carry the images to evaluate in this column (the Hub "
                        "release: one config per model, its output in 'image')")
    p.add_argument("--real-column", default=None, metavar="COLUMN",
                   help="the records' column holding the real figure (default: real_image or "
                        "gt_image)")
    p.add_argument("--judge", default=None, metavar="local:MODEL|openai:MODEL",
                   help="the multimodal judge (needed for the quiz and judge metrics)")
    add_endpoint_args(p, timeout=120.0)
    p.add_argument("--workers", type=int, default=1,
                   help="records asked at once (for remote judges)")
    p.add_argument("--metrics", default="quiz,judge,standard",
                   help="comma list of quiz, judge, standard")
    p.add_argument("--grader", default="parse", choices=["parse", "judge"],
                   help="free-form quiz answers: compared by the parser (numbers, units, "
                        "text) or graded by the judge model (SciGenBench's verification step)")
    p.add_argument("--missing", default="fail", choices=["fail", "skip"],
                   help="a record without a generated image: fail (all quizzes wrong, scores "
                        "0) or skip (left out, as SciGenBench's scripts do)")
    p.add_argument("--clip-model", default="openai/clip-vit-base-patch16",
                   help="CLIP for the CLIP score: a local folder or a Hub id")
    p.add_argument("--fid-weights", default=None,
                   help="local file of FID's InceptionV3 weights (pt_inception-2015-12-05)")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--out", default="science_t2i_scigen", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...nodes import _comfy
    from ...nodes.errors import ScienceT2IError
    from ..evaluate import bar_chart_png, charts_available, write_report
    from ..faults import check_device, check_output_dir, require_modules
    from ..judge_cache import JudgeCache
    from ..scigen_data import load_scigen_records, parse_image_sets
    from ..scigen_eval import (METRICS, add_standard_metrics, judge_image_set, scigen_markdown,
                               summarise, summarise_groups, unparseable)

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ScienceT2IError(f"--metrics {args.metrics!r}: use a comma list of {METRICS}.")
    judged = [m for m in metrics if m in ("quiz", "judge")]
    if judged and not args.judge:
        raise ScienceT2IError(f"--metrics {','.join(judged)} needs a judge: pass --judge "
                              "local:MODEL or --judge openai:MODEL --base-url URL, or "
                              "--metrics standard.")
    if args.workers < 1:
        raise ScienceT2IError(f"--workers must be at least 1, got {args.workers}.")
    device = check_device(args.device)
    out = check_output_dir(args.out, "--out")
    if not args.images and not args.generated_column:
        raise ScienceT2IError("nothing to evaluate: pass --images DIR (images named by record "
                              "id) or --generated-column COLUMN (images inside the records).")
    image_sets: dict = parse_image_sets(args.images)
    if args.generated_column:
        name = Path(args.records).name + (f"/{args.split}" if args.split else "")
        image_sets = {name: None, **image_sets}   # None: the records' own images
    records = load_scigen_records(args.records, args.split, args.source,
                                  real_key=args.real_column,
                                  generated_key=args.generated_column)
    if args.exclude_ids:
        from ..faults import read_text
        drop = {line.strip() for line in read_text(args.exclude_ids, "--exclude-ids file")
                .splitlines() if line.strip()}
        records = [r for r in records if r.id not in drop]
        if not records:
            raise ScienceT2IError(f"--exclude-ids {args.exclude_ids} leaves no record.")
    if args.real_images:
        from ..scigen_data import attach_real_images
        attached = attach_real_images(records, Path(args.real_images))
        print(f"real images: {attached} of {len(records)} records found in {args.real_images}")
    if args.limit is not None:
        if args.limit < 1:
            raise ScienceT2IError(f"--limit must be at least 1, got {args.limit}.")
        records = records[:args.limit]
    with_real = sum(r.real_image is not None for r in records)
    standard = "standard" in metrics and with_real > 0
    if "standard" in metrics and not with_real:
        print("note: no record has a real image; PSNR/SSIM/CLIP/FID are skipped")
    if standard:
        require_modules(["torchmetrics"] + ([] if args.no_fid else ["torch_fidelity"]),
                        "the standard metrics (PSNR/SSIM/CLIP/FID)",
                        ", or leave them out with --metrics quiz,judge")
    charts = charts_available()

    backend = grader = None
    if judged:
        backend = backend_from_args(args.judge, args)
        grader = backend if args.grader == "judge" else None
    cache = JudgeCache(out / "judge_cache.jsonl")
    quizzes = {r.id: len(r.quizzes) for r in records}
    results: dict[str, dict] = {}
    for name, folder in image_sets.items():
        if judged:
            rows = judge_image_set(records, folder, backend, cache, metrics=judged,
                                   grader=grader, workers=args.workers, desc=f"judging {name}")
        else:
            from ..scigen_eval import image_sources
            rows = [{"id": r.id, "image_type": r.image_type, "subject": r.subject,
                     "status": "ok" if ref else "missing", "image": ref.label if ref else None}
                    for r, ref in zip(records, image_sources(records, folder))]
        std_summary = None
        if standard:
            from ..scigen_metrics import StandardMetrics
            engine = StandardMetrics(clip_model=args.clip_model, fid_weights=args.fid_weights,
                                     fid=not args.no_fid,
                                     device=str(_comfy.torch_device()) if device == "auto"
                                     else device)
            std_summary = add_standard_metrics(rows, records, folder, engine)
        kw = {"missing": args.missing, "quizzes_of": quizzes.__getitem__}
        results[name] = {"folder": str(folder) if folder else f"{args.records} "
                                   f"({args.generated_column})", "overall": summarise(rows, **kw),
                         "by_image_type": summarise_groups(rows, "image_type", **kw),
                         "by_subject": summarise_groups(rows, "subject", **kw),
                         "standard": std_summary, "unparseable": unparseable(rows),
                         "failures": [{"id": r["id"], "status": r["status"],
                                       "error": r.get("error", "")}
                                      for r in rows if r["status"] != "ok"],
                         "records": rows}
    title = f"SciGenBench evaluation of {args.records}" + (f" ({args.split})" if args.split
                                                           else "")
    markdown = scigen_markdown(results, title)
    chart = None
    if charts and "quiz" in metrics:
        chart = bar_chart_png({n: {t: (v["r_inv"] or 0.0) * 100
                                   for t, v in r["by_image_type"].items()}
                               for n, r in results.items()}, title, "R_inv (%)")
    data = {"records_file": str(args.records), "split": args.split, "source": args.source,
            "judge": backend.name if backend else None, "metrics": metrics,
            "missing": args.missing, "grader": args.grader, "records": len(records),
            "cache": {"file": str(cache.path), "replies": len(cache), "reused": cache.hits},
            "sets": results}
    paths = write_report(out, "scigen_eval", data, markdown, chart, setting="--out")
    print(markdown)
    failed = sum(r["overall"]["judge_error"] for r in results.values())
    if failed:
        print(f"warning: {failed} record(s) had judge calls fail after {args.retries + 1} "
              "tries and are left out; their errors are in scigen_eval.json ('failures'). Run the "
              "same command again to ask only those.")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0
