"""``science-t2i eval-reward --dataset DIR``: reward-model accuracy, the paper's protocol."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...nodes.sciscore_loading import DEFAULT_SCISCORE
    p = subparsers.add_parser(
        "eval-reward", help="reward-model accuracy on a Science-T2I dataset",
        description="For each record, score explicit_image[0] and superficial_image[0] against "
                    "the implicit prompt; accuracy = share of records where the explicit image "
                    "wins, overall, per category and per task. Repeat --model to compare "
                    "checkpoints (e.g. SciScore against a CLIP-H baseline). Writes "
                    "reward_accuracy.{json,md} and reward_accuracy_per_task.png to --out (the "
                    "chart only when matplotlib is installed).")
    p.add_argument("--dataset", required=True,
                   help="local dataset: save_to_disk folder, parquet shards or JSON/JSONL")
    p.add_argument("--split", default=None, help="split to evaluate (needed if several)")
    p.add_argument("--model", action="append", default=None,
                   help=f"folder in models/sciscore, a path or a hub id; repeatable "
                        f"(default {DEFAULT_SCISCORE})")
    p.add_argument("--out", default="science_t2i_eval", help="output folder")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--preprocess", default="exact", choices=["exact", "fast"],
                   help="exact (default): the pixels SciScore's own processor computes, as in "
                        "the paper; fast: one float resize (scores about 1e-3 off)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...nodes.errors import ScienceT2IError
    from ...nodes.sciscore import load_sciscore
    from ...nodes.sciscore_loading import DEFAULT_SCISCORE
    from ..datasets import load_records
    from ..evaluate import (bar_chart_png, charts_available, reward_accuracy, reward_markdown,
                            write_report)
    from ..faults import check_device, check_output_dir

    check_device(args.device)
    out = check_output_dir(args.out, "--out")
    charts = charts_available()
    records = load_records(args.dataset, args.split, require=(
        "implicit_prompt", "explicit_image", "superficial_image"))
    if args.limit is not None:
        if args.limit < 1:
            raise ScienceT2IError(f"--limit must be at least 1, got {args.limit}.")
        records = records[:args.limit]
    models = args.model or [DEFAULT_SCISCORE]
    results: dict[str, dict] = {}
    for name in models:
        scorer = load_sciscore(name, device=args.device, dtype=args.dtype,
                               batch_size=args.batch_size, preprocess=args.preprocess)
        label = Path(name).name or name
        if label in results:
            label = name
        results[label] = reward_accuracy(records, scorer,
                                         batch_records=max(1, args.batch_size // 2))
        del scorer
    title = f"Reward accuracy on {args.dataset}" + (f" ({args.split})" if args.split else "")
    markdown = reward_markdown(results, title)
    chart = bar_chart_png({m: {t: v["accuracy"] * 100 for t, v in r["by_task"].items()}
                           for m, r in results.items()}, title, "accuracy (%)") if charts else None
    data = {"dataset": str(args.dataset), "split": args.split, "records": len(records),
            "models": results}
    paths = write_report(out, "reward_accuracy", data, markdown, chart, setting="--out")
    print(markdown)
    print("written: " + ", ".join(str(p) for p in paths))
    return 0
