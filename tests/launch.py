"""Trainer commands under accelerate's real multi-process launcher: ``accelerate launch
--multi_gpu --num_processes N`` starts N processes through torchrun, which on a machine
without a visible GPU join a gloo process group on the CPU (accelerate's MULTI_CPU).
(``--cpu --num_processes N`` would start one process in accelerate 1.x.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# runs the science-t2i command, stopping one process mid-way through a checkpoint write
KILL_CHILD = Path(__file__).with_name("kill_child.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", SCIENCE_T2I_NO_PROGRESS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def accelerate_command(num_processes: int, args: list[str], script: Path | None = None,
                       launch_args: tuple[str, ...] = ("--multi_gpu",)) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args,
           "--num_processes", str(num_processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port())]
    target = [str(script)] if script else ["-m", "science_t2i.training.cli"]
    return cmd + target + list(args)


def run(num_processes: int, args: list[str], timeout: float = 600,
        launch_args: tuple[str, ...] = ("--multi_gpu",),
        check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(accelerate_command(num_processes, args, launch_args=launch_args),
                         capture_output=True, text=True, env=launch_env(), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"accelerate launch failed ({out.returncode}):\n"
                             f"{out.stderr[-6000:]}")
    return out


def run_and_kill(num_processes: int, args: list[str], kill_at_step: int,
                 timeout: float = 300) -> None:
    """Start the command; when process 1 is half-way through writing its part of checkpoint
    ``kill_at_step``, SIGKILL every process of the run (launcher and workers), as a crashed
    node would leave it."""
    import psutil
    proc = subprocess.Popen(accelerate_command(num_processes, args, script=KILL_CHILD),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=launch_env(KILL_AT_STEP=str(kill_at_step)),
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            line = proc.stdout.readline()
            if "WRITING" in line:
                break
            if not line and proc.poll() is not None:
                raise AssertionError(f"the run ended before checkpoint {kill_at_step}:\n"
                                     f"{proc.stderr.read()[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint {kill_at_step} within {timeout} s")
    finally:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        psutil.wait_procs([p for p in map(_process, family) if p is not None], timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def _process(pid: int):
    import psutil
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
