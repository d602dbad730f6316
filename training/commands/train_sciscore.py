"""``science-t2i train-sciscore --config FILE [key=value ...] [--resume]``: train SciScore."""
from __future__ import annotations

import argparse

from ._trainer_args import add_config_arguments, report, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-sciscore", help="train or extend the SciScore reward model on Science-T2I data",
        description="Fine-tune a CLIP (or SciScore itself) with the paper's three-term "
                    "preference loss. Settings come from the defaults (the paper's), then "
                    "--config, then key.sub=value overrides, e.g. data.path=/data/fullset "
                    "optim.max_steps=300. The best model on the held-out split is written to "
                    "<output_dir>/best as a SciScore folder the SciScore Loader node opens.")
    add_config_arguments(p, "data.path=/data/sci optim.micro_batch_size=8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train_sciscore import SciScoreTrainConfig, train_sciscore
    cfg = resolve_config(SciScoreTrainConfig, args)
    if cfg is None:
        return 0
    result = train_sciscore(cfg, resume=args.resume)
    if result.best_dir is not None:
        report(f"best held-out accuracy {result.best_accuracy:.4f} at step "
               f"{result.best_step}: {result.best_dir}")
    return 0
