"""The ``science-t2i`` command.

Each subcommand lives in its own module under ``training/commands/`` exposing
``register(subparsers)``, which adds a parser whose ``func(args) -> int`` runs it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..nodes import _comfy
from ..nodes.errors import ScienceT2IError

# Subcommand modules, in help order.
COMMANDS: list[str] = ["score", "eval_reward", "eval_t2i", "validate_workflow", "sft", "train_sciscore", "dpo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="science-t2i",
        description="Science-T2I: SciScore scoring, evaluation and FLUX fine-tuning.")
    parser.add_argument("--models-dir", default=None,
                        help="ComfyUI-style models directory (default: $SCIENCE_T2I_MODELS "
                             "or ./models)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.models_dir:
        _comfy.set_models_dir(args.models_dir)
    try:
        return int(args.func(args) or 0)
    except ScienceT2IError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
