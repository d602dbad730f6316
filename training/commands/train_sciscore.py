"""``science-t2i train-sciscore --config FILE [key=value ...] [--resume]``: train SciScore."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-sciscore", help="train or extend the SciScore reward model on Science-T2I data",
        description="Fine-tune a CLIP (or SciScore itself) with the paper's three-term "
                    "preference loss. Settings come from the defaults (the paper's), then "
                    "--config, then key.sub=value overrides, e.g. data.path=/data/fullset "
                    "optim.max_steps=300. The best model on the held-out split is written to "
                    "<output_dir>/best as a SciScore folder the SciScore Loader node opens.")
    p.add_argument("--config", default=None, help="YAML or TOML config file")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in output_dir")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. data.path=/data/sci optim.micro_batch_size=8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import config_to_dict, load_config
    from ..train_sciscore import SciScoreTrainConfig, train_sciscore
    cfg = load_config(SciScoreTrainConfig, args.config, args.overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    result = train_sciscore(cfg, resume=args.resume)
    if result.best_dir is not None:
        print(f"best held-out accuracy {result.best_accuracy:.4f} at step {result.best_step}: "
              f"{result.best_dir}")
    return 0
