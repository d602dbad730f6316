"""Arguments every trainer command shares: a config file, key=value overrides, --resume and
--print-config (settings come from the paper's defaults, then the file, then overrides)."""
from __future__ import annotations

import argparse
import os
from typing import Any, TypeVar

T = TypeVar("T")


def add_trainer_parser(subparsers: argparse._SubParsersAction, name: str, *, help: str,
                       description: str, example: str, run: Any,
                       aliases: list[str] | None = None) -> argparse.ArgumentParser:
    """A trainer's subcommand with the shared arguments; ``run(args) -> int`` runs it.
    Returns the parser for the trainer's own arguments."""
    parser = subparsers.add_parser(
        name, aliases=aliases or [], help=help,
        description=f"{description} Settings come from the defaults (the "
        "paper's), then --config, then key.sub=value overrides. Several GPUs: accelerate "
        f"launch --multi_gpu --num_processes N -m science_t2i.training.cli {name} ...")
    parser.add_argument("--config", default=None, help="YAML or TOML config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in output_dir")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"config overrides, e.g. {example}; they may also follow "
                             "the flags (all are applied, later ones win)")
    parser.set_defaults(func=run)
    return parser


def resolve_config(cls: type[T], args: argparse.Namespace,
                   extra_overrides: list[str] | None = None) -> T | None:
    """The config for ``args``; None (after printing it) when --print-config was given."""
    from ..core.config import config_to_dict, load_config
    cfg: Any = load_config(cls, args.config, list(args.overrides) + list(extra_overrides or []))
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg


def report(message: str) -> None:
    """Print the run's result once: on the main process of ``accelerate launch`` (RANK 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(message)
