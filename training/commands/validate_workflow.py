"""``science-t2i validate-workflow FILE...``: check workflow JSON against the node definitions.

Each file is checked against the pack's node classes and the recorded ComfyUI core nodes;
a UI workflow in ``workflows/`` is also compared with its API twin in ``workflows/api/``
(and the reverse). Exit status 1 when any file has a problem.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate-workflow",
        help="check ComfyUI workflow JSON (UI or API format) against the node definitions",
        description=__doc__.split("\n\n", 1)[1])
    p.add_argument("files", nargs="+", metavar="FILE", help="workflow .json files")
    p.add_argument("--no-twins", action="store_true",
                   help="do not compare a UI workflow with its API twin (and the reverse)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..comfy.workflow_check import load_node_defs, validate_files
    report = validate_files(args.files, load_node_defs(), twins=not args.no_twins)
    failed = 0
    for path, problems in report.items():
        if problems:
            failed += 1
            print(f"FAIL {path}")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(f"ok   {path}")
    if failed:
        print(f"{failed} of {len(report)} workflow(s) have problems", file=sys.stderr)
    return 1 if failed else 0
