"""``science-t2i eval-reward --dataset DIR``: reward-model accuracy, the paper's protocol."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._model_args import add_endpoint_args, backend_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...nodes.sciscore import DEFAULT_SCISCORE
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
    j = p.add_argument_group(
        "multimodal judges (the paper's LMM baseline)",
        "Each judge sees the implicit prompt and both images and names the one that fits, "
        "asked in both image orders; its accuracy is the mean of the two orders' (the "
        "reference's eval_lmm.py), printed as a column beside SciScore.")
    j.add_argument("--judge", action="append", default=None,
                   metavar="local:MODEL|openai:MODEL",
                   help="a judge: local:<folder in models/vlm, path or Hub id> or "
                        "openai:<model> with --base-url; repeatable")
    add_endpoint_args(j, timeout=120.0)
    j.add_argument("--judge-parse", default="robust", choices=["robust", "strict"],
                   help="robust (default): read the choice from any reply shape; strict: "
                        "the reference's rule, only the exact JSON it asked for counts")
    j.add_argument("--judge-only", action="store_true",
                   help="evaluate the judges without SciScore")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...nodes.errors import ScienceT2IError
    from ...nodes.sciscore import DEFAULT_SCISCORE, load_sciscore
    from ..core.datasets import load_records
    from ..core.preflight import check_device, check_output_dir
    from ..eval.reports import bar_chart_png, charts_available, write_report
    from ..eval.science_t2i import reward_accuracy, reward_markdown

    check_device(args.device)
    out = check_output_dir(args.out, "--out")
    charts = charts_available()
    records = load_records(args.dataset, args.split, require=(
        "implicit_prompt", "explicit_image", "superficial_image"))
    if args.limit is not None:
        if args.limit < 1:
            raise ScienceT2IError(f"--limit must be at least 1, got {args.limit}.")
        records = records[:args.limit]
    models = [] if args.judge_only else (args.model or [DEFAULT_SCISCORE])
    if args.judge_only and not args.judge:
        raise ScienceT2IError("--judge-only needs at least one --judge.")
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
    notes = []
    for spec in args.judge or []:
        from ..eval.judge_cache import JudgeCache
        from ..eval.judge_pairs import judge_pair_accuracy
        backend = backend_from_args(spec, args)
        table = judge_pair_accuracy(records, backend, strict=args.judge_parse == "strict",
                                    cache=JudgeCache(out / "judge_cache.jsonl"))
        results[f"judge {spec}"] = table
        o = table["overall"]
        notes.append(f"- judge {spec}: image-1 first {100 * o['forward_accuracy']:.1f}%, "
                     f"swapped {100 * o['reverse_accuracy']:.1f}%, right in both orders "
                     f"{100 * o['consistent']:.1f}%; {len(table['unparseable'])} unparseable "
                     f"replies (counted wrong), {len(table['failures'])} records left out "
                     "after failed calls (run again to retry them).")
    title = f"Reward accuracy on {args.dataset}" + (f" ({args.split})" if args.split else "")
    markdown = reward_markdown(results, title)
    if notes:
        markdown += ("\n## Judges\n\nJudge accuracy is the mean of both image orders "
                     "(eval_lmm.py); SciScore's is the share of records where the explicit "
                     "image scores higher.\n\n" + "\n".join(notes) + "\n")
    chart = bar_chart_png({m: {t: v["accuracy"] * 100 for t, v in r["by_task"].items()}
                           for m, r in results.items()}, title, "accuracy (%)") if charts else None
    data = {"dataset": str(args.dataset), "split": args.split, "records": len(records),
            "models": results}
    paths = write_report(out, "reward_accuracy", data, markdown, chart, setting="--out")
    print(markdown)
    print("written: " + ", ".join(str(p) for p in paths))
    return 0
