"""Processes and precision: the one accelerate ``Accelerator`` of a run, the mixed precision
it trains in, and the set-ups the trainers refuse (sharded weights) or check (trackers)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ...nodes.errors import ScienceT2IError

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """Mixed precision actually used, in accelerate's terms ("bf16", "fp16" or "no" = fp32).

    "auto" is bf16 on CUDA and fp32 elsewhere. On CPU it is always fp32, with a warning when
    bf16/fp16 was asked for: half-precision training on CPU is slow and not what the paper's
    numbers use.
    """
    if requested in ("fp32", "no"):
        return "no"
    if device.type != "cuda":
        if requested != "auto":
            log.warning("train.mixed_precision=%s needs CUDA; training in fp32 on %s "
                        "(set train.mixed_precision=fp32 to silence this)", requested, device.type)
        return "no"
    return "bf16" if requested == "auto" else requested


_SHARDED = (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
            ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM"))


def check_parallelism(acc: Any = None) -> None:
    """Refuse sharded set-ups (FSDP, DeepSpeed, Megatron-LM), saying why, instead of running
    them wrongly: the trainers checkpoint whole state dicts from the main process and keep
    every weight on every process, which sharding breaks. Called before the Accelerator is
    made (accelerate's own FSDP set-up fails on a CPU with a bare RuntimeError) and after."""
    from accelerate.utils import DistributedType
    asked = [name for env, name in _SHARDED if os.environ.get(env, "").lower() in ("1", "true")]
    sharded = acc is not None and acc.distributed_type in (
        DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    if not asked and not sharded:
        return
    what = ", ".join(asked) or str(acc.distributed_type.value)
    where = ("; on CPU accelerate does not shard at all (it stops, or silently trains plain "
             "data parallel instead)" if not torch.cuda.is_available() else "")
    raise ScienceT2IError(
        f"accelerate is set up for {what}, which the trainers do not support: they run data "
        "parallel (DDP), keeping every weight on every process and saving whole state dicts "
        f"from the main process, which sharded weights and optimizer states break{where}. "
        "Launch with `accelerate launch --multi_gpu --num_processes N ...` (or an accelerate "
        "config with distributed_type: MULTI_GPU); README 'Training on several GPUs' says when "
        "sharding would pay and what to use meanwhile.")


def check_trackers(trackers: Iterable[str]) -> list[str]:
    """The trackers asked for, refusing any whose package is missing (accelerate would drop it
    with a debug message and the run would log nowhere)."""
    from accelerate.tracking import get_available_trackers
    available = {str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()}
    wanted = list(dict.fromkeys(trackers))
    missing = [t for t in wanted if t not in available]
    if missing:
        raise ScienceT2IError(
            f"log.trackers asks for {', '.join(missing)}, which is not installed; "
            f"pip install {' '.join(missing)} (or drop it from log.trackers).")
    return wanted


def make_accelerator(mixed_precision: str, trackers: Iterable[str] = (),
                     project_dir: str | Path | None = None) -> tuple[Any, str]:
    """The one Accelerator of a run and the precision it uses (accelerate's terms).

    The device decides the precision and accelerate's shared state keeps the first precision
    it is given, so the device comes from PartialState (which sets none) first.
    """
    from accelerate import Accelerator, PartialState
    check_parallelism()
    cpu = not torch.cuda.is_available()
    precision = resolve_precision(mixed_precision, PartialState(cpu=cpu).device)
    log_with = check_trackers(trackers) or None
    acc = Accelerator(mixed_precision=precision, cpu=cpu, log_with=log_with,
                      project_dir=str(project_dir) if project_dir is not None else None)
    check_parallelism(acc)
    return acc, precision
