"""``science-t2i synth-data``: verified synthetic science images as a training dataset:
generate an image per problem (ImgCoder, FLUX, a ComfyUI workflow, or a folder), keep the
images whose inverse quiz passes (and optional judge / SciScore thresholds), and export one
conversational row per question for trl's SFTTrainer, with provenance and a report."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._generator_args import add_comfy_args, add_flux_args
    from ._model_args import add_endpoint_args
    p = subparsers.add_parser(
        "synth-data", help="verified synthetic science images as a dataset trl trains on",
        description="For each problem (records with questions and answers, e.g. SciGenBench's), "
                    "draws an image into --out/images, asks --judge each question from the "
                    "image alone, keeps the images that pass, and writes --out/dataset "
                    "(datasets.load_from_disk), --out/parquet and synth_report.{json,md}. "
                    "Resumable: images and judge replies already made are kept.")
    p.add_argument("--records", required=True,
                   help="problems with questions: SciGenBench's scigenbench.json layout "
                        "(question, quizzes) or the Hub layout (original_question, "
                        "multimodal_question, answer); JSON, JSONL, parquet or save_to_disk")
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--out", default="science_t2i_synth", help="output folder")
    g = p.add_argument_group("generation (one of --imgcoder, --flux, --comfy, --images)")
    g.add_argument("--imgcoder", default=None, metavar="local:MODEL|openai:MODEL",
                   help="ImgCoder with this language model (figures drawn as code in the "
                        "sandbox; the code is kept with each row)")
    g.add_argument("--imgcoder-base-url", default=None,
                   help="its endpoint, when not --base-url")
    add_flux_args(g)
    g.add_argument("--images", default=None, metavar="DIR",
                   help="images already made, <record id>.png")
    for name, kind, default in (("width", int, 1024), ("height", int, 768), ("dpi", int, 100),
                                ("repairs", int, 2), ("resolution", int, None),
                                ("steps", int, None), ("seed", int, 0)):
        g.add_argument(f"--{name}", type=kind, default=default,
                       help="ImgCoder's figure size" if name in ("width", "height", "dpi",
                                                                  "repairs")
                       else "FLUX / ComfyUI generation")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (--flux)")
    add_comfy_args(p)
    v = p.add_argument_group("verification")
    v.add_argument("--judge", required=True, metavar="local:MODEL|openai:MODEL",
                   help="the multimodal judge that answers the questions from each image")
    add_endpoint_args(v, timeout=120.0)
    v.add_argument("--workers", type=int, default=4, help="judge requests at once")
    v.add_argument("--min-quiz", type=float, default=1.0,
                   help="share of an image's questions the judge must answer right (default: "
                        "all)")
    v.add_argument("--min-judge", type=float, default=None,
                   help="also ask the judge's 0-2 rubric and keep images whose mean reaches it")
    v.add_argument("--sciscore", default=None, metavar="MODEL",
                   help="with --min-sciscore: SciScore checkpoint to score image vs problem")
    v.add_argument("--min-sciscore", type=float, default=None)
    v.add_argument("--dedup-distance", type=int, default=4,
                   help="drop an image within this many bits (of 64) of a kept image's "
                        "difference hash; -1 keeps near-duplicates")
    v.add_argument("--keep-given-away", action="store_true",
                   help="keep questions whose answer the figure's code writes out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...nodes.errors import ScienceT2IError
    from ..core.preflight import check_device, check_output_dir, require_modules
    from ..eval.judge_cache import JudgeCache
    from ..eval.reports import write_report
    from ..eval.scigen.data import load_scigen_records
    from ..synth import (VerifyOptions, dataset_rows, export_dataset, synth_markdown,
                         synth_report, verify_images)
    from ._model_args import backend_from_args

    given = [n for n in ("imgcoder", "flux", "comfy", "images") if getattr(args, n)]
    if len(given) != 1:
        raise ScienceT2IError("give one image source: --imgcoder, --flux, --comfy or --images.")
    if (args.sciscore is None) != (args.min_sciscore is None):
        raise ScienceT2IError("--sciscore and --min-sciscore go together.")
    options = VerifyOptions(min_quiz=args.min_quiz, min_judge=args.min_judge,
                            min_sciscore=args.min_sciscore, dedup_distance=args.dedup_distance,
                            drop_leaks=not args.keep_given_away, workers=args.workers)
    options.check()
    require_modules(["datasets"], "synth-data (it writes a datasets folder)")
    check_device(args.device)
    out = check_output_dir(args.out, "--out")
    records = load_scigen_records(args.records, args.split)
    if args.limit is not None:
        records = records[:max(1, args.limit)]
    judge = backend_from_args(args.judge, args)          # fails here on a bad spec
    drawn = _draw(args, given[0], records, out)
    scorer = None
    if args.sciscore:
        from ...nodes.sciscore import load_sciscore
        scorer = load_sciscore(args.sciscore, device=args.device)
    verdicts = verify_images(records, drawn, judge, JudgeCache(out / "judge_cache.jsonl"),
                             options, scorer)
    rows = dataset_rows(records, drawn, verdicts, judge.name)
    report = synth_report(records, verdicts, drawn, rows)
    paths = list(export_dataset(rows, out).values())
    markdown = synth_markdown(report)
    paths += write_report(out, "synth_report", report, markdown, None, setting="--out")[:2]
    print(markdown)
    if not rows:
        print("no image passed: nothing exported (see synth_report.md for why)")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def _draw(args, source, records, out):
    from ..synth import draw_records
    images = out / "images"
    if source == "images":
        return draw_records(records, images, "folder", Path(args.images))
    if source == "imgcoder":
        return draw_records(records, images, "imgcoder", _imgcoder(args), name=args.imgcoder)
    if source == "flux":
        from ..generate.flux_runs import draw_images, settings_for
        from ._generator_args import flux_setup
        settings = settings_for("pack", resolution=args.resolution, steps=args.steps)
        pipe, _base, _process = flux_setup(args)
        return draw_records(records, images, "flux", lambda jobs: draw_images(pipe, jobs, settings),
                            seed=args.seed, name=str(args.flux))
    from ..generate.comfy_runs import draw_comfy_images
    from ._generator_args import comfy_setup
    client, graph, slots, workflow = comfy_setup(args, args.resolution)
    return draw_records(records, images, "comfyui",
                        lambda jobs: draw_comfy_images(client, graph, slots, jobs, args.resolution),
                        seed=args.seed, name=Path(workflow).name)


def _imgcoder(args):
    """ImgCoder's batch run with the --imgcoder model, as ``(problems, out) -> counts``."""
    from ...nodes.lmm import backend_from_spec
    from ..generate.imgcoder import run_imgcoder
    model = backend_from_spec(args.imgcoder, base_url=args.imgcoder_base_url or args.base_url,
                              api_key_env=args.api_key_env, timeout=300.0, retries=args.retries)
    return lambda problems, out: run_imgcoder(problems, model, out, width=args.width,
                                              height=args.height, dpi=args.dpi,
                                              repairs=args.repairs)
