"""``science-t2i stage2 --config FILE [key=value ...] [--comfy URL ...] [--resume]``: stage 2
(``dpo`` is the same command under its earlier name)."""
from __future__ import annotations

import argparse

from ._trainer_args import add_trainer_parser, report, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_trainer_parser(
        subparsers, "stage2", aliases=["dpo"], run=run,
        help="stage 2: masked online preference fine-tuning of FLUX with SciScore rewards",
        description="Sample rollouts with the current LoRA (in-process, or on ComfyUI servers "
                    "with --comfy), score them with SciScore, mask the subject with "
                    "GroundingDINO and train on best-vs-worst pairs (objective.kind=oft, the "
                    "paper's, or flow-dpo).",
        example="rollout.prompts=prompts.json train.rounds=50")
    p.add_argument("--comfy", action="append", default=[], metavar="URL[=LORA_DIR]",
                   help="a ComfyUI server for rollouts (repeat for several); sets "
                        "rollout.source=comfy. LORA_DIR: that server's models/loras folder as "
                        "seen from here (or set comfy.lora_dir for a shared folder)")


def run(args: argparse.Namespace) -> int:
    from ..stage2.config import Stage2Config
    from ..stage2.trainer import train_stage2
    cfg = resolve_config(Stage2Config, args, ["rollout.source=comfy"] if args.comfy else [])
    if cfg is None:
        return 0
    path = train_stage2(cfg, resume=args.resume, comfy_servers=args.comfy)
    report(f"LoRA written to {path}")
    return 0
