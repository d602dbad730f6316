"""``science-t2i sft --config FILE [key=value ...] [--resume]``: stage-1 LoRA SFT of FLUX."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sft", help="stage 1: rectified-flow LoRA fine-tuning of FLUX on Science-T2I data",
        description="Fine-tune a LoRA on FLUX with (implicit prompt, explicit image) pairs. "
                    "Settings come from the defaults (the paper's), then --config, then "
                    "key.sub=value overrides, e.g. train.max_steps=500 optim.lr=1e-4.")
    p.add_argument("--config", default=None, help="YAML or TOML config file")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in output_dir")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. data.path=/data/sci train.batch_size=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import config_to_dict, load_config
    from ..sft import SFTConfig, train_sft
    cfg = load_config(SFTConfig, args.config, args.overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    path = train_sft(cfg, resume=args.resume)
    print(f"LoRA written to {path}")
    return 0
