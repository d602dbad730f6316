"""Bytes DDP all-reduces per optimizer step: computed from the trained parameters, and counted
by the trainer core's DDP communication hook in a real 2-process run (``accelerate launch
--multi_gpu``, the tests' launcher; gloo on a CPU-only machine)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from builders import load


def gradient_bytes(params) -> int:
    """What DDP all-reduces once per optimizer step: every trained parameter's gradient."""
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)


def counted_by_ddp(script: Path, args: list[str], processes: int = 2) -> int:
    """Run ``script --child ddp ARGS`` on ``processes`` processes; its main process prints a
    JSON line with the ``allreduce_bytes`` of its last optimizer step."""
    launch = load("launch")
    cmd = launch.accelerate_command(processes, ["--child", "ddp", *args], script=script)
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env=launch.launch_env())
    if out.returncode != 0:
        raise SystemExit(f"2-process run failed:\n{out.stderr[-4000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return int(json.loads(lines[-1])["allreduce_bytes"])
