"""``science-t2i train-sciscore --config FILE [key=value ...] [--resume]``: train SciScore."""
from __future__ import annotations

import argparse

from ._trainer_args import add_trainer_parser, report, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    add_trainer_parser(
        subparsers, "train-sciscore", run=run,
        help="train or extend the SciScore reward model on Science-T2I data",
        description="Fine-tune a CLIP (or SciScore itself) with the paper's three-term "
                    "preference loss. The best model on the held-out split is written to "
                    "<output_dir>/best as a SciScore folder the SciScore Loader node opens.",
        example="data.path=/data/sci train.micro_batch_size=8")


def run(args: argparse.Namespace) -> int:
    from ..sciscore.config import SciScoreTrainConfig
    from ..sciscore.trainer import train_sciscore
    cfg = resolve_config(SciScoreTrainConfig, args)
    if cfg is None:
        return 0
    result = train_sciscore(cfg, resume=args.resume)
    if result.best_dir is not None:
        report(f"best held-out accuracy {result.best_accuracy:.4f} at step "
               f"{result.best_step}: {result.best_dir}")
    return 0
