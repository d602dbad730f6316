"""Training checkpoints: atomic, pickle-free, keep the last K.

A checkpoint is a folder ``checkpoint-<step>`` holding ``tensors.safetensors`` (every tensor
of the state, e.g. LoRA weights, optimizer moments, RNG states) and ``state.json`` (the rest
of the nested state, with references to the tensors). It is written into a hidden temporary
folder and renamed into place only when complete, so a run killed mid-write (SIGKILL, power
loss) leaves the previous checkpoint untouched and ``latest()`` never returns a partial one.
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

from ..nodes.errors import ScienceT2IError
from ..nodes.files import atomic_directory

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-"  # temporaries in the checkpoints folder: .tmp-checkpoint-<step>-*, .tmp-old-*
FORMAT_VERSION = 1


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
    (0 keeps all)."""

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

    def _clean_temporaries(self) -> None:
        # left behind by a run killed mid-write; never valid checkpoints
        for p in self.output_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        from safetensors.torch import save_file
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._clean_temporaries()
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode(state, tensors, "")
        final = self.path_for(step)
        with atomic_directory(final, tmp_prefix=TMP_PREFIX) as tmp:
            save_file(tensors, str(tmp / "tensors.safetensors"),
                      metadata={"format": "science-t2i-checkpoint"})
            meta = {"format_version": FORMAT_VERSION, "step": int(step), "state": encoded}
            (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
        self._prune()
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for p in self.checkpoints()[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)

    def load(self, path: str | Path | None = None) -> dict[str, Any]:
        """Load a checkpoint folder (default: the latest); returns the saved state dict."""
        from safetensors.torch import load_file
        if path is None:
            path = self.latest()
            if path is None:
                raise ScienceT2IError(f"no checkpoint found in {self.output_dir}; start without "
                                      "--resume or point output_dir at the run to continue.")
        path = Path(path)
        meta_file, tensor_file = path / "state.json", path / "tensors.safetensors"
        if not meta_file.is_file() or not tensor_file.is_file():
            raise ScienceT2IError(f"{path} is not a complete checkpoint (state.json and "
                                  "tensors.safetensors expected); pick another checkpoint-* "
                                  "folder.")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_file))
        except Exception as exc:
            raise ScienceT2IError(f"checkpoint {path} is unreadable ({exc}); delete it and "
                                  "resume from an older one.") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise ScienceT2IError(f"checkpoint {path} has format version "
                                  f"{meta.get('format_version')}, this version reads "
                                  f"{FORMAT_VERSION}.")
        state = _decode(meta["state"], tensors)
        return state

    def load_for_resume(self, digest: str, what_may_change: str) -> tuple[Path, dict[str, Any]]:
        """The latest checkpoint for ``--resume``: refused when there is none, or when it was
        written with settings whose digest differs (resuming those would not continue the
        same run). ``what_may_change`` names the settings a resume may alter."""
        path = self.latest()
        if path is None:
            raise ScienceT2IError(f"--resume: no checkpoint in {self.output_dir}; run without "
                                  "--resume to start a new run.")
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
