"""Bytes DDP all-reduces per optimizer step: computed from the trained parameters, and counted
by the trainer core's DDP communication hook in a real 2-process run (``accelerate launch
--multi_gpu``; gloo on a CPU-only machine)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def gradient_bytes(params) -> int:
    """What DDP all-reduces once per optimizer step: every trained parameter's gradient."""
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)


def counted_by_ddp(script: Path, args: list[str], processes: int = 2) -> int:
    """Run ``script --child ddp ARGS`` on ``processes`` processes; its main process prints a
    JSON line with the ``allreduce_bytes`` of its last optimizer step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), str(script),
           "--child", "ddp", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", SCIENCE_T2I_NO_PROGRESS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"2-process run failed:\n{out.stderr[-4000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return int(json.loads(lines[-1])["allreduce_bytes"])
