"""``science-t2i dpo --config FILE [key=value ...] [--comfy URL ...] [--resume]``: stage 2."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dpo", help="stage 2: masked online preference fine-tuning of FLUX with SciScore rewards",
        description="Sample rollouts with the current LoRA (in-process, or on ComfyUI servers "
                    "with --comfy), score them with SciScore, mask the subject with "
                    "GroundingDINO and train on best-vs-worst pairs (objective.kind=oft, the "
                    "paper's, or flow-dpo). Settings: defaults (the paper's), then --config, "
                    "then key.sub=value overrides, e.g. model.sft_lora=runs/sft/x.safetensors.")
    p.add_argument("--config", default=None, help="YAML or TOML config file")
    p.add_argument("--comfy", action="append", default=[], metavar="URL[=LORA_DIR]",
                   help="a ComfyUI server for rollouts (repeat for several); sets "
                        "rollout.source=comfy. LORA_DIR: that server's models/loras folder as "
                        "seen from here (or set comfy.lora_dir for a shared folder)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in output_dir")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. rollout.prompts=prompts.json train.rounds=50")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import config_to_dict, load_config
    from ..dpo import DPOConfig, train_dpo
    overrides = list(args.overrides)
    if args.comfy:
        overrides.append("rollout.source=comfy")
    cfg = load_config(DPOConfig, args.config, overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    path = train_dpo(cfg, resume=args.resume, comfy_servers=args.comfy)
    print(f"LoRA written to {path}")
    return 0
