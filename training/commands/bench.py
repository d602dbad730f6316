"""``science-t2i bench``: the Science-T2I benchmark end to end: generate the run (a diffusers
FLUX pipeline, or a folder of images already made), score it with the rubric judge out of 100
and with SciScore, report, and set it beside earlier runs as a leaderboard. Resumable: images
on disk and judge replies already cached are kept."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...nodes.sciscore import DEFAULT_SCISCORE
    from ._model_args import add_rubric_judge_args
    p = subparsers.add_parser(
        "bench", help="the Science-T2I benchmark: generate, judge by rubric, score out of 100",
        description="Generates the implicit, explicit and superficial prompt of every record "
                    "with a FLUX pipeline into --out/images/{ip,ep,sp} (or takes --images), "
                    "then scores the images with the rubric judge (--judge) and SciScore, and "
                    "writes bench.{json,md} and a per-task chart to --out. --compare adds "
                    "earlier --out folders to leaderboard.md.")
    p.add_argument("--dataset", required=True, help="a Science-T2I test set (with rubrics)")
    p.add_argument("--split", default=None)
    p.add_argument("--out", default="science_t2i_bench", help="output folder")
    p.add_argument("--name", default=None, help="the run's name in the leaderboard")
    g = p.add_argument_group("generation")
    g.add_argument("--flux", default=None, metavar="PATH",
                   help="a diffusers FLUX.1 folder or Hub id (dev or schnell)")
    g.add_argument("--lora", default=None, help="a FLUX LoRA file to apply")
    g.add_argument("--images", default=None, metavar="RUN",
                   help="images already made (RUN/{ip,ep,sp}/<record>_<k>.png) instead")
    g.add_argument("--preset", default="reference", choices=["reference", "pack"],
                   help="reference: FLUX.1-schnell's evaluation settings (4 steps, 512 px, "
                        "guidance 4, sequence length 256, 1 sample); pack: 28 steps, "
                        "guidance 3.5, sequence length 512")
    for name, kind in (("steps", int), ("resolution", int), ("guidance", float),
                       ("max-sequence-length", int), ("samples", int), ("seed", int)):
        g.add_argument(f"--{name}", type=kind, default=None, help="overrides the preset")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s = p.add_argument_group("scoring")
    s.add_argument("--model", default=DEFAULT_SCISCORE, help="SciScore checkpoint")
    s.add_argument("--no-sciscore", action="store_true", help="the rubric judge only")
    s.add_argument("--batch-size", type=int, default=16)
    add_rubric_judge_args(s)
    p.add_argument("--compare", nargs="*", default=[], metavar="OUT",
                   help="--out folders of earlier runs for the leaderboard")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ...nodes.errors import ScienceT2IError
    from ..core.datasets import load_records
    from ..core.preflight import check_device, check_output_dir
    from ..eval.bench_report import (bench_markdown, leaderboard_markdown, leaderboard_row,
                                     read_report, rubric_chart)
    from ..eval.reports import write_report
    from ..generate.flux_runs import settings_for
    from ._model_args import rubric_judge_template, run_rubric_judge

    if bool(args.flux) == bool(args.images):
        raise ScienceT2IError("give --flux (generate the run) or --images (a run already "
                              "made), one of the two.")
    if args.no_sciscore and not args.judge:
        raise ScienceT2IError("--no-sciscore leaves nothing to score: add --judge.")
    check_device(args.device)
    out = check_output_dir(args.out, "--out")
    others = [read_report(o) for o in args.compare]   # before any work
    records = load_records(args.dataset, args.split, require=("implicit_prompt",))
    template = rubric_judge_template(args, records)
    settings = settings_for(args.preset, steps=args.steps, resolution=args.resolution,
                            guidance=args.guidance,
                            max_sequence_length=args.max_sequence_length,
                            samples=args.samples, seed=args.seed) if args.flux else None
    run_dir = Path(args.images) if args.images else out / "images"
    name = args.name or (Path(args.flux).name if args.flux else run_dir.name)
    data: dict = {"name": name, "dataset": str(args.dataset), "run": str(run_dir),
                  "generation": asdict(settings) if settings else None}
    if args.flux:
        _generate(args, records, run_dir, settings, data)
    if not args.no_sciscore:
        data["sciscore"] = _sciscore(args, records, run_dir)
    if args.judge:
        data["rubric"] = run_rubric_judge(args, run_dir, records, template, out)
    markdown = bench_markdown(name, data)
    paths = write_report(out, "bench", data, markdown, rubric_chart(data, name), setting="--out")
    rows = [leaderboard_row(name, data)] + [
        leaderboard_row(str(d.get("name") or Path(o).name), d)
        for o, d in zip(args.compare, others)]
    board = leaderboard_markdown(rows)
    paths += write_report(out, "leaderboard", {"rows": rows}, board, None, setting="--out")[:2]
    print(markdown + "\n" + board)
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def _generate(args, records, run_dir, settings, data) -> None:
    import gc

    import torch

    from ...nodes import _comfy
    from ..generate.flux_runs import generate_run, load_flux_pipeline
    device = _comfy.torch_device() if args.device == "auto" else torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = load_flux_pipeline(args.flux, device, dtype, args.lora)
    data["generated"] = generate_run(pipe, records, run_dir, settings)
    del pipe
    gc.collect()


def _sciscore(args, records, run_dir) -> dict:
    from ...nodes.sciscore import load_sciscore
    from ..eval.science_t2i import evaluate_t2i_run
    scorer = load_sciscore(args.model, device=args.device, batch_size=args.batch_size)
    summary, _rows = evaluate_t2i_run(run_dir, scorer, records, args.batch_size)
    return summary
