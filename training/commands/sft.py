"""``science-t2i sft --config FILE [key=value ...] [--resume]``: stage-1 LoRA SFT of FLUX."""
from __future__ import annotations

import argparse

from ._trainer_args import add_trainer_parser, report, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    add_trainer_parser(
        subparsers, "sft", run=run,
        help="stage 1: rectified-flow LoRA fine-tuning of FLUX on Science-T2I data",
        description="Fine-tune a LoRA on FLUX with (implicit prompt, explicit image) pairs.",
        example="data.path=/data/sci train.batch_size=2")


def run(args: argparse.Namespace) -> int:
    from ..sft.config import SFTConfig
    from ..sft.trainer import train_sft
    cfg = resolve_config(SFTConfig, args)
    if cfg is None:
        return 0
    path = train_sft(cfg, resume=args.resume)
    report(f"LoRA written to {path}")
    return 0
