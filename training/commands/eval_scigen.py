"""``science-t2i eval-scigen``: SciGenBench's evaluation of generated scientific images."""
from __future__ import annotations

import argparse

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
    from ..core.preflight import check_device, check_output_dir
    from ..eval.scigen.run import ScigenOptions, check_options, parse_metrics, run_scigen

    opts = ScigenOptions(
        records=args.records, split=args.split, source=args.source,
        real_images=args.real_images, exclude_ids=args.exclude_ids, images=args.images,
        generated_column=args.generated_column, real_column=args.real_column,
        metrics=parse_metrics(args.metrics), workers=args.workers, grader=args.grader,
        missing=args.missing, clip_model=args.clip_model, fid_weights=args.fid_weights,
        fid=not args.no_fid, device=args.device, limit=args.limit)
    check_options(opts, has_judge=bool(args.judge))
    opts.device = check_device(args.device)
    out = check_output_dir(args.out, "--out")
    backend = backend_from_args(args.judge, args) if opts.judged else None
    data, markdown, paths = run_scigen(opts, backend, out)
    print(markdown)
    failed = sum(r["overall"]["judge_error"] for r in data["sets"].values())
    if failed:
        print(f"warning: {failed} record(s) had judge calls fail after {args.retries + 1} "
              "tries and are left out; their errors are in scigen_eval.json ('failures'). Run the "
              "same command again to ask only those.")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0
