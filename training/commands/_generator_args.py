"""Where images come from, for the commands that generate them (``bench``, ``synth-data``):
a diffusers FLUX pipeline (on one or several processes, its base optionally quantized) or any
ComfyUI API workflow on one or more servers, with the nodes to fill in."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "bench_generate.json"


def add_flux_args(group: Any) -> None:
    """--flux, --lora and --base."""
    from ..flux.quantize import BASES
    group.add_argument("--flux", default=None, metavar="PATH",
                       help="a diffusers FLUX.1 folder or Hub id (dev or schnell)")
    group.add_argument("--lora", default=None, help="a FLUX LoRA file to apply (--flux)")
    group.add_argument("--base", default="bf16", choices=BASES,
                       help="--flux transformer precision: bf16, or quantized with torchao "
                            "(8bit = fp8 on fp8 hardware, else int8)")


def add_comfy_args(p: argparse.ArgumentParser) -> None:
    """--comfy (in ``group`` of the caller) is added here too, with the workflow's nodes."""
    from ..generate.comfy_runs import DEFAULT_NODES
    c = p.add_argument_group(
        "ComfyUI generation (--comfy)",
        "The workflow holds the model, LoRAs and sampler settings; each image's prompt, seed "
        "and (with --resolution) size are written into the nodes named here, by id or title, "
        "optionally as NODE.INPUT.")
    c.add_argument("--comfy", nargs="+", default=None, metavar="URL",
                   help="ComfyUI servers (http://HOST:PORT) running --workflow, in parallel")
    c.add_argument("--workflow", default=None, metavar="API.json",
                   help="an API-format workflow (default: the pack's "
                        "workflows/api/bench_generate.json, FLUX.1-schnell at 4 steps)")
    for role, help_text in (("prompt", "the positive text encoder"),
                            ("seed", "the sampler (seed or noise_seed)"),
                            ("size", "the empty-latent node (width, height; batch_size set "
                                     "to 1); without it the workflow's size is kept"),
                            ("output", "the SaveImage node whose image is kept; needed only "
                                       "when the graph saves several")):
        c.add_argument(f"--{role}-node", default=None, metavar="NODE",
                       help=f"{help_text} (default: the node titled {DEFAULT_NODES[role]!r})")
    c.add_argument("--comfy-timeout", type=float, default=1800.0,
                   help="seconds one image may take on a server before it is given up")


def comfy_setup(args: argparse.Namespace, resolution: int | None) -> tuple[Any, dict, Any, Path]:
    """The client, the workflow, its slots and its path, all checked before anything is
    queued (named nodes and inputs, a size node where a size is asked for)."""
    from ...nodes.errors import ScienceT2IError
    from ..comfy.client import ComfyClient, load_api_workflow
    from ..generate.comfy_runs import workflow_slots
    workflow = Path(args.workflow) if args.workflow else DEFAULT_WORKFLOW
    graph = load_api_workflow(workflow)
    slots = workflow_slots(graph, args.prompt_node, args.seed_node, args.size_node,
                           args.output_node)
    if resolution is not None and slots.size is None:
        raise ScienceT2IError("--resolution needs the workflow's empty-latent node: name it "
                              "with --size-node.")
    return ComfyClient(args.comfy, timeout=args.comfy_timeout), graph, slots, workflow


def flux_setup(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """The pipeline (with --lora, its transformer at --base), the base used, and accelerate's
    process state when launched on several processes (else None)."""
    import os

    import torch

    from ...nodes import _comfy
    from ..flux.quantize import resolve_base
    from ..generate.flux_runs import load_flux_pipeline
    process = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState
        process = PartialState()
        device = process.device
    else:
        device = _comfy.torch_device() if args.device == "auto" else torch.device(args.device)
    base = resolve_base(args.base, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return load_flux_pipeline(args.flux, device, dtype, args.lora, base=base), base, process
