"""Training checkpoints: atomic, pickle-free, keep the last K.

A checkpoint is a folder ``checkpoint-<step>`` holding ``state.safetensors`` (every tensor of
the shared state, e.g. LoRA weights, optimizer moments) and ``state.json`` (the rest of the
nested state, with references to the tensors), and one ``process-<rank>.json`` /
``.safetensors`` part per process for what it alone holds (its RNG states, its rollouts). It
is assembled in a hidden staging folder and renamed into place only when complete, so a run
killed mid-write (SIGKILL, power loss) leaves the previous checkpoint untouched and
``latest()`` never returns a partial one.
No pickle is involved: loading runs no code from the file.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...nodes.core import commit_directory, recover_directory
from ...nodes.errors import ScienceT2IError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-"  # temporaries in the checkpoints folder: .tmp-checkpoint-<step>-*, .tmp-old-*
FORMAT_VERSION = 2  # 2: per-process parts and the process count


# ----------------------------------------------------------------------------- (de)serialising

def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Turn a nested state into JSON, moving tensors (and numpy arrays) into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}" if path else k)
                                 for k, v in obj.items()}}
        # optimizer states key parameters by int: keep the key types
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}"),
                               _encode(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ScienceT2IError(f"cannot store a {type(obj).__name__} at {path!r} in a checkpoint; "
                          "checkpoint states hold tensors, arrays, numbers, strings, lists "
                          "and dicts only.")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"], copy=True)
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    raise ScienceT2IError(f"unrecognised entry in checkpoint state: {sorted(obj)}")


# ----------------------------------------------------------------------------- RNG

def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) every CUDA device's RNG state."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # JSON has no tuples inside the Mersenne state; random.setstate needs them
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32),
                         int(np_state[2]), int(np_state[3]), float(np_state[4])))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.to(torch.uint8) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ----------------------------------------------------------------------------- manager

class CheckpointManager:
    """Save/load ``checkpoint-<step>`` folders under ``output_dir``; keep the last ``keep_last``
    (0 keeps all).

    A checkpoint holds the run's shared state (``state.json`` + ``state.safetensors``, written
    by one process) and, in a run of several processes, one part per process
    (``process-<rank>.json`` + ``.safetensors``: its random state, its rollouts). All of it is
    written into a staging folder (``begin``, ``write_part``), which ``commit`` renames into
    place in one step, so a kill at any point leaves the previous checkpoint as the latest.
    """

    def __init__(self, output_dir: str | Path, keep_last: int = 3):
        if keep_last < 0:
            raise ScienceT2IError(f"keep_last must be >= 0 (0 keeps every checkpoint); got "
                                  f"{keep_last}.")
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.output_dir.is_dir():
            return []
        found = []
        for p in self.output_dir.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def path_for(self, step: int) -> Path:
        return self.output_dir / f"checkpoint-{int(step):08d}"

    def staging_path(self, step: int) -> Path:
        """Where checkpoint ``step`` is assembled; every process derives the same name."""
        return self.output_dir / f"{TMP_PREFIX}{self.path_for(step).name}"

    def _clean_temporaries(self) -> None:
        # a checkpoint moved aside by a replacement that was killed: put it back first
        for old in self.output_dir.glob(f"{TMP_PREFIX}old-*"):
            recover_directory(self.output_dir / old.name[len(f"{TMP_PREFIX}old-"):], TMP_PREFIX)
        # the rest was left behind by a run killed mid-write; never valid checkpoints
        for p in self.output_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)

    # --- writing ---------------------------------------------------------------------------
    def begin(self, step: int) -> Path:
        """Create the staging folder of checkpoint ``step`` (one process; the others wait)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._clean_temporaries()
        staging = self.staging_path(step)
        staging.mkdir()
        return staging

    @staticmethod
    def _write(folder: Path, name: str, state: dict[str, Any], header: dict[str, Any]) -> None:
        from safetensors.torch import save_file
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode(state, tensors, "")
        save_file(tensors, str(folder / f"{name}.safetensors"),
                  metadata={"format": "science-t2i-checkpoint"})
        (folder / f"{name}.json").write_text(json.dumps({**header, "state": encoded}),
                                             encoding="utf-8")

    def write_part(self, staging: Path, rank: int, state: dict[str, Any]) -> None:
        """One process's own part of the checkpoint being staged."""
        self._write(staging, f"process-{int(rank)}", state, {"format_version": FORMAT_VERSION})

    def commit(self, staging: Path, step: int, state: dict[str, Any],
               processes: int = 1) -> Path:
        """Write the shared state into the staging folder and rename it into place (the
        process that called ``begin``, after every part was written)."""
        self._write(staging, "state", state, {"format_version": FORMAT_VERSION,
                                              "step": int(step), "processes": int(processes)})
        final = self.path_for(step)
        commit_directory(staging, final, TMP_PREFIX)
        self._prune()
        return final

    def save(self, step: int, state: dict[str, Any],
             parts: list[dict[str, Any]] | None = None) -> Path:
        """Write a whole checkpoint from one process (``parts``: per-process states)."""
        staging = self.begin(step)
        try:
            for rank, part in enumerate(parts or []):
                self.write_part(staging, rank, part)
            return self.commit(staging, step, state, processes=max(1, len(parts or [])))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for p in self.checkpoints()[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path, name: str) -> dict[str, Any]:
        from safetensors.torch import load_file
        meta_file, tensor_file = path / f"{name}.json", path / f"{name}.safetensors"
        if not meta_file.is_file() or not tensor_file.is_file():
            raise ScienceT2IError(f"{path} is not a complete checkpoint ({meta_file.name} and "
                                  f"{tensor_file.name} expected); pick another checkpoint-* "
                                  "folder.")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_file))
        except Exception as exc:
            raise ScienceT2IError(f"checkpoint {path} is unreadable ({exc}); delete it and "
                                  "resume from an older one.") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise ScienceT2IError(
                f"checkpoint {path} has format version {meta.get('format_version')}, this "
                f"version reads {FORMAT_VERSION}; finish that run with the version that wrote "
                "it, or start a new run.")
        meta["state"] = _decode(meta["state"], tensors)
        return meta

    def _resolve(self, path: str | Path | None) -> Path:
        if path is None:
            path = self.latest()
            if path is None:
                raise ScienceT2IError(f"no checkpoint found in {self.output_dir}; start without "
                                      "--resume or point output_dir at the run to continue.")
        return Path(path)

    def load(self, path: str | Path | None = None) -> dict[str, Any]:
        """The shared state of a checkpoint folder (default: the latest)."""
        return self._read(self._resolve(path), "state")["state"]

    def processes(self, path: str | Path | None = None) -> int:
        """How many processes wrote the checkpoint."""
        path = self._resolve(path)
        try:
            return int(json.loads((path / "state.json").read_text(encoding="utf-8"))
                       .get("processes", 1))
        except (OSError, ValueError) as exc:
            raise ScienceT2IError(f"checkpoint {path} is unreadable ({exc}).") from exc

    def load_part(self, path: str | Path, rank: int) -> dict[str, Any]:
        """Process ``rank``'s own part of a checkpoint."""
        return self._read(Path(path), f"process-{int(rank)}")["state"]

    def load_for_resume(self, digest: str, what_may_change: str,
                        processes: int = 1) -> tuple[Path, dict[str, Any]]:
        """The latest checkpoint for ``--resume``: refused when there is none, when it was
        written with settings whose digest differs (resuming those would not continue the
        same run), or by another number of processes. ``what_may_change`` names the settings a
        resume may alter."""
        path = self.latest()
        if path is None:
            raise ScienceT2IError(f"--resume: no checkpoint in {self.output_dir}; run without "
                                  "--resume to start a new run.")
        written_by = self.processes(path)
        if written_by != processes:
            raise ScienceT2IError(
                f"--resume: {path} was written by a run of {written_by} process(es) and this "
                f"run has {processes}. Each process's random state and share of the data are "
                f"in the checkpoint, so resume with the same count (accelerate launch "
                f"--num_processes {written_by} ...), or start a new run in a new output_dir.")
        state = self.load(path)
        if state.get("resume_digest") != digest:
            raise ScienceT2IError(
                f"--resume: {path} was written with different settings; resume with the "
                f"original config (only {what_may_change} may change) or use a new output_dir.")
        return path, state

    @staticmethod
    def step_of(path: str | Path) -> int:
        m = CHECKPOINT_RE.match(Path(path).name)
        if not m:
            raise ScienceT2IError(f"{path} is not a checkpoint-<step> folder.")
        return int(m.group(1))
