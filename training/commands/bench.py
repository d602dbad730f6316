"""``science-t2i bench``: the Science-T2I benchmark end to end: generate the run (a diffusers
FLUX pipeline on one or several GPUs, any ComfyUI API workflow on one or several servers, or a
folder of images already made), score it with the rubric judge out of 100 and with SciScore,
report, and set it beside earlier runs as a leaderboard. Resumable: images on disk and judge
replies already cached are kept."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...nodes.sciscore import DEFAULT_SCISCORE
    from ._generator_args import add_comfy_args, add_flux_args
    from ._model_args import add_rubric_judge_args
    p = subparsers.add_parser(
        "bench", help="the Science-T2I benchmark: generate, judge by rubric, score out of 100",
        description="Generates the implicit, explicit and superficial prompt of every record "
                    "into --out/images/{ip,ep,sp}, with a FLUX pipeline (--flux; several GPUs "
                    "under accelerate launch) or any ComfyUI API workflow on one or more "
                    "servers (--comfy), or takes --images; then scores the images with the "
                    "rubric judge (--judge) and SciScore, and writes bench.{json,md} and a "
                    "per-task chart to --out. --compare adds earlier --out folders to "
                    "leaderboard.md.")
    p.add_argument("--dataset", required=True, help="a Science-T2I test set (with rubrics)")
    p.add_argument("--split", default=None)
    p.add_argument("--out", default="science_t2i_bench", help="output folder")
    p.add_argument("--name", default=None, help="the run's name in the leaderboard")
    g = p.add_argument_group("generation (one of --flux, --comfy, --images)")
    add_flux_args(g)
    g.add_argument("--images", default=None, metavar="RUN",
                   help="images already made (RUN/{ip,ep,sp}/<record>_<k>.png) instead")
    g.add_argument("--preset", default="reference", choices=["reference", "pack"],
                   help="--flux settings. reference: FLUX.1-schnell's evaluation settings (4 "
                        "steps, 512 px, guidance 4, sequence length 256, 1 sample); pack: 28 "
                        "steps, guidance 3.5, sequence length 512")
    for name, kind in (("steps", int), ("resolution", int), ("guidance", float),
                       ("max-sequence-length", int), ("samples", int), ("seed", int)):
        g.add_argument(f"--{name}", type=kind, default=None, help="overrides the preset")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--generate-only", action="store_true",
                   help="stop after generating (score the folder later with --images)")
    add_comfy_args(p)
    s = p.add_argument_group("scoring")
    s.add_argument("--model", default=DEFAULT_SCISCORE, help="SciScore checkpoint")
    s.add_argument("--no-sciscore", action="store_true", help="the rubric judge only")
    s.add_argument("--batch-size", type=int, default=16)
    add_rubric_judge_args(s)
    p.add_argument("--compare", nargs="*", default=[], metavar="OUT",
                   help="--out folders of earlier runs for the leaderboard")
    p.set_defaults(func=run)


def _sources(args: argparse.Namespace) -> str:
    from ...nodes.errors import ScienceT2IError
    given = [name for name in ("flux", "comfy", "images") if getattr(args, name)]
    if len(given) != 1:
        raise ScienceT2IError("give --flux (a FLUX pipeline), --comfy (ComfyUI servers) or "
                              "--images (a run already made), one of the three.")
    if args.generate_only and args.images:
        raise ScienceT2IError("--generate-only with --images leaves nothing to do.")
    for flag, source in (("lora", "flux"), ("workflow", "comfy")):
        if getattr(args, flag) and given[0] != source:
            raise ScienceT2IError(f"--{flag} goes with --{source}.")
    return given[0]


def run(args: argparse.Namespace) -> int:
    from ...nodes.errors import ScienceT2IError
    from ..core.datasets import load_records
    from ..core.preflight import check_device, check_output_dir
    from ._model_args import rubric_judge_template

    source = _sources(args)
    if args.no_sciscore and not args.judge and not args.generate_only:
        raise ScienceT2IError("--no-sciscore leaves nothing to score: add --judge.")
    check_device(args.device)
    out = check_output_dir(args.out, "--out")
    from ..eval.bench_report import read_report
    others = [read_report(o) for o in args.compare]   # before any work
    records = load_records(args.dataset, args.split, require=("implicit_prompt",))
    template, judge_skipped = rubric_judge_template(args, records, not args.no_sciscore)
    run_dir = Path(args.images) if args.images else out / "images"
    data: dict = {"dataset": str(args.dataset), "run": str(run_dir)}
    if source == "flux":
        if not _generate_flux(args, records, run_dir, data):
            return 0                         # a worker process of a multi-GPU launch
    elif source == "comfy":
        _generate_comfy(args, records, run_dir, data)
    data["name"] = args.name or {"flux": Path(str(args.flux)).name,
                                 "comfy": Path(str(args.workflow or "bench_generate")).stem,
                                 "images": run_dir.name}[source]
    if args.generate_only:
        print(f"generated into {run_dir}: {data['generated']}")
        return 0
    if not args.no_sciscore:
        data["sciscore"] = _sciscore(args, records, run_dir)
    if judge_skipped:
        data["rubric_skipped"] = judge_skipped
    elif args.judge:
        from ._model_args import run_rubric_judge
        data["rubric"] = run_rubric_judge(args, run_dir, records, template, out)
    _write(args, out, data, others)
    return 0


def _write(args, out, data, others) -> None:
    from ..eval.bench_report import (bench_markdown, leaderboard_markdown, leaderboard_row,
                                     rubric_chart)
    from ..eval.reports import write_report
    name = data["name"]
    markdown = bench_markdown(name, data)
    paths = write_report(out, "bench", data, markdown, rubric_chart(data, name), setting="--out")
    rows = [leaderboard_row(name, data)] + [
        leaderboard_row(str(d.get("name") or Path(o).name), d)
        for o, d in zip(args.compare, others)]
    board = leaderboard_markdown(rows)
    paths += write_report(out, "leaderboard", {"rows": rows}, board, None, setting="--out")[:2]
    print(markdown + "\n" + board)
    print("written: " + ", ".join(str(p) for p in paths))


def _generate_flux(args, records, run_dir, data) -> bool:
    """Generate with the FLUX pipeline; under ``accelerate launch`` each process draws its
    share. False in the processes other than the main one (they stop after generating)."""
    import gc
    from dataclasses import asdict

    from ..generate.flux_runs import generate_run, settings_for
    from ._generator_args import flux_setup
    settings = settings_for(args.preset, steps=args.steps, resolution=args.resolution,
                            guidance=args.guidance,
                            max_sequence_length=args.max_sequence_length,
                            samples=args.samples, seed=args.seed)
    pipe, base, process = flux_setup(args)
    data["generation"] = {**asdict(settings), "base": base, "lora": args.lora,
                          "processes": process.num_processes if process else 1}
    data["generated"] = generate_run(pipe, records, run_dir, settings, process=process)
    del pipe
    gc.collect()
    return process is None or process.is_main_process


def _generate_comfy(args, records, run_dir, data) -> None:
    from ...nodes.errors import ScienceT2IError
    from ..generate.comfy_runs import generate_comfy_run
    from ._generator_args import comfy_setup
    for flag in ("steps", "guidance", "max_sequence_length"):
        if getattr(args, flag) is not None:
            raise ScienceT2IError(f"--{flag.replace('_', '-')} is the workflow's own with "
                                  "--comfy: set it in the workflow's nodes.")
    client, graph, slots, workflow = comfy_setup(args, args.resolution)
    data["generation"] = {"comfyui": [s.url for s in client.servers], "workflow": str(workflow),
                          "resolution": args.resolution or "the workflow's",
                          "samples": args.samples or 1, "seed": args.seed or 0}
    data["generated"] = generate_comfy_run(client, graph, slots, records, run_dir,
                                           samples=args.samples or 1, seed=args.seed or 0,
                                           size=args.resolution)


def _sciscore(args, records, run_dir) -> dict:
    from ...nodes.sciscore import load_sciscore
    from ..eval.science_t2i import evaluate_t2i_run
    scorer = load_sciscore(args.model, device=args.device, batch_size=args.batch_size)
    summary, _rows = evaluate_t2i_run(run_dir, scorer, records, args.batch_size)
    return summary
