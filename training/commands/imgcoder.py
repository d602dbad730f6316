"""``science-t2i imgcoder --prompts FILE --out DIR``: figures drawn as code, in batch."""
from __future__ import annotations

import argparse

from ._model_args import add_endpoint_args, backend_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "imgcoder", help="draw scientific figures as code (understand -> plan -> code)",
        description="For each problem, a language model plans the figure and writes matplotlib "
                    "code, which runs in the sandboxed renderer (repaired on failure). Writes "
                    "<id>.png, codes/<id>.py, plans/<id>.md and imgcoder.jsonl to --out; a "
                    "re-run draws only what is missing. eval-scigen --images reads --out "
                    "directly.")
    p.add_argument("--prompts", required=True,
                   help=".txt (one problem per line) or records with id and question / "
                        "original_question (JSON, JSONL, parquet, save_to_disk)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", required=True, metavar="local:MODEL|openai:MODEL",
                   help="the language model: local:<folder in models/vlm or models/LLM, path "
                        "or Hub id> or openai:<model> with --base-url")
    add_endpoint_args(p, timeout=300.0)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--repairs", type=int, default=2,
                   help="corrected versions asked for after a failed render")
    p.add_argument("--cpu-seconds", type=float, default=20.0,
                   help="sandbox CPU-time limit per render")
    p.add_argument("--memory-mb", type=int, default=2048, help="sandbox memory limit")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...nodes.errors import ScienceT2IError
    from ...nodes.imgcoder import SandboxLimits
    from ..core.preflight import check_output_dir
    from ..generate.imgcoder import load_problems, run_imgcoder

    for flag, value, low in (("--width", args.width, 16), ("--height", args.height, 16),
                             ("--dpi", args.dpi, 10), ("--repairs", args.repairs, 0)):
        if value < low:
            raise ScienceT2IError(f"{flag} must be at least {low}, got {value}.")
    out = check_output_dir(args.out, "--out")
    problems = load_problems(args.prompts)
    if args.limit is not None:
        if args.limit < 1:
            raise ScienceT2IError(f"--limit must be at least 1, got {args.limit}.")
        problems = problems[:args.limit]
    limits = SandboxLimits(cpu_seconds=args.cpu_seconds,
                           wall_seconds=max(args.cpu_seconds * 1.5, args.cpu_seconds + 10),
                           memory_mb=args.memory_mb)
    backend = backend_from_args(args.model, args)
    counts = run_imgcoder(problems, backend, out, width=args.width, height=args.height,
                          dpi=args.dpi, repairs=args.repairs, limits=limits)
    print(f"imgcoder: {counts['drawn']} drawn, {counts['failed']} failed, {counts['skipped']} "
          f"already there, of {counts['problems']} problems; figures in {out}")
    if counts["failed"]:
        print(f"the failures' code and errors are in {out}/codes and {out}/imgcoder.jsonl; run "
              "again to retry them")
    return 0
