"""``science-t2i eval-t2i RUN [--base BASE]``: SciScore of generated images, ND and RI."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...nodes.sciscore import DEFAULT_SCISCORE
    from ._model_args import add_rubric_judge_args
    p = subparsers.add_parser(
        "eval-t2i", help="score a text-to-image run: mean SciScore of IP/EP/SP images, ND, RI",
        description="RUN holds ip/, ep/ and sp/ folders of images generated from the implicit, "
                    "explicit and superficial prompts. Every image is scored against its "
                    "record's IMPLICIT prompt (records from --dataset, matched by the index "
                    "that starts the file name, or from RUN/metadata.jsonl). Reports mean "
                    "scores, ND = 100 (IP - SP) / (EP - SP), and with --base the relative "
                    "improvement RI = (F_IP - B_IP) / (B_EP - B_IP) of RUN over BASE. Writes "
                    "t2i_eval.{json,md} and t2i_eval_per_task.png to --out (the chart only when "
                    "matplotlib is installed).")
    p.add_argument("run", help="folder of the (fine-tuned) run")
    p.add_argument("--base", default=None, help="folder of the base-model run, for RI")
    p.add_argument("--dataset", default=None, help="the dataset the prompts came from")
    p.add_argument("--split", default=None)
    p.add_argument("--model", default=DEFAULT_SCISCORE,
                   help=f"SciScore checkpoint (default {DEFAULT_SCISCORE})")
    p.add_argument("--out", default="science_t2i_eval", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--preprocess", default="exact", choices=["exact", "fast"],
                   help="exact (default): the pixels SciScore's own processor computes, as in "
                        "the paper; fast: one float resize (scores about 1e-3 off)")
    p.add_argument("--batch-size", type=int, default=16)
    j = p.add_argument_group(
        "rubric judge (the benchmark's score out of 100)",
        "A multimodal judge grades each image against its record's scene_scoring and "
        "real_scoring (Science-T2I test sets) and the run is scored out of 100 per prompt "
        "kind, per category and per task, beside SciScore. Replies are cached in "
        "--out/rubric_cache.jsonl: a re-run asks only what is missing.")
    add_rubric_judge_args(j)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...nodes.sciscore import load_sciscore
    from ..core.datasets import load_records
    from ..core.preflight import check_device, check_output_dir
    from ..eval.reports import bar_chart_png, charts_available, write_report
    from ..eval.science_t2i import collect_generated, compare_runs, evaluate_t2i_run, t2i_markdown
    from ._model_args import rubric_judge_template, run_rubric_judge

    check_device(args.device)
    out = check_output_dir(args.out, "--out")
    charts = charts_available()
    records = (load_records(args.dataset, args.split, require=("implicit_prompt",))
               if args.dataset else None)
    # check both layouts (and the judge's inputs) before loading any model
    collect_generated(Path(args.run), records)
    template, judge_skipped = rubric_judge_template(args, records)
    if args.base:
        collect_generated(Path(args.base), records)
    scorer = load_sciscore(args.model, device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size, preprocess=args.preprocess)
    runs: dict[str, dict] = {}
    images: dict[str, list] = {}
    if args.base:
        runs["base"], images["base"] = evaluate_t2i_run(Path(args.base), scorer, records,
                                                        args.batch_size)
    runs["run"], images["run"] = evaluate_t2i_run(Path(args.run), scorer, records,
                                                  args.batch_size)
    ri = compare_runs(runs["base"], runs["run"]) if args.base else None
    title = f"Text-to-image evaluation of {args.run}"
    markdown = t2i_markdown(runs, ri, title)
    chart = bar_chart_png({f"{name} {kind.upper()}": {t: s[kind] for t, s in
                                                        summary["by_task"].items()}
                           for name, summary in runs.items() for kind in ("ip", "ep", "sp")},
                          title, "mean SciScore") if charts else None
    data = {"run": str(args.run), "base": args.base, "model": str(args.model), "runs": runs,
            "relative_improvement": ri, "images": images}
    if judge_skipped:
        data["rubric_skipped"] = judge_skipped
        markdown += f"\n{judge_skipped}.\n"
    elif args.judge:
        from ..eval.rubric_runs import rubric_markdown
        del scorer   # SciScore leaves before a local judge loads
        rubric = run_rubric_judge(args, args.run, records, template, out)
        data["rubric"] = rubric
        markdown += "\n" + rubric_markdown(rubric)
    paths = write_report(out, "t2i_eval", data, markdown, chart, setting="--out")
    print(markdown)
    print("written: " + ", ".join(str(p) for p in paths))
    return 0

