"""``science-t2i ARGS``, except that process 1 stops half-way through writing its part of
checkpoint ``$KILL_AT_STEP`` (half a file on disk), says WRITING and waits to be killed.
Run by tests/launch.py under ``accelerate launch``."""
import os
import sys
import time

from science_t2i.training.cli import main
from science_t2i.training.core import checkpoints

_write_part = checkpoints.CheckpointManager.write_part
_kill_at = f"checkpoint-{int(os.environ['KILL_AT_STEP']):08d}"


def write_part(self, staging, rank, state):
    _write_part(self, staging, rank, state)
    if rank == 1 and staging.name.endswith(_kill_at):
        part = staging / "process-1.safetensors"
        data = part.read_bytes()
        part.write_bytes(data[: len(data) // 2])
        print("WRITING", flush=True)
        time.sleep(600)


checkpoints.CheckpointManager.write_part = write_part
sys.exit(main(sys.argv[1:]))
