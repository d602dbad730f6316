"""Safe file handling shared by every module: atomic writes and checked model loading."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ScienceT2IError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask is process-wide, and changing it later could race with
# other threads (ComfyUI's server) creating files.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success.

    A crash or kill mid-write leaves the previous ``target`` untouched (rename is atomic on
    one filesystem), and never a half-written file under the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (renames) to disk; a no-op where unsupported (Windows)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, tmp_prefix: str = ".tmp-") -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success flush it and swap it into place.

    A crash mid-write leaves the previous ``target`` folder as it was; the temporaries are
    named ``<tmp_prefix>...`` so an owner can sweep leftovers of a killed run.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix}{target.name}-", dir=target.parent))
    try:
        yield tmp
        commit_directory(tmp, target, tmp_prefix)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_directory(tmp: str | os.PathLike, target: str | os.PathLike,
                     tmp_prefix: str = ".tmp-") -> None:
    """Flush the finished folder ``tmp`` (files and entries) and rename it to ``target``,
    replacing an existing ``target`` by moving it aside first. Several processes may have
    written into ``tmp``; only one calls this."""
    tmp, target = Path(tmp), Path(target)
    # mkdtemp makes folders private (0700); give them what a plain mkdir would
    os.chmod(tmp, 0o777 & ~_UMASK)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    if target.exists():  # replacing: move the old one aside, then swap
        old = target.parent / f"{tmp_prefix}old-{target.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(target, json.dumps(obj, indent=2, sort_keys=False).encode("utf-8"))


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], target: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a .safetensors file, turning a corrupt or truncated file into a clear error."""
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise ScienceT2IError(f"model file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # SafetensorError, OSError, ...
        raise ScienceT2IError(
            f"{path} is not a readable safetensors file ({exc}); it is corrupt or was only "
            "partly downloaded: delete it and download it again.") from exc


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise ScienceT2IError(f"{path} is not a readable safetensors file ({exc}).") from exc


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a pickle checkpoint (.pth/.bin/.pt) with ``weights_only=True`` only.

    Arbitrary pickles can run code when loaded; a file that needs more than tensors and plain
    containers is refused with advice to convert it to safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ScienceT2IError(f"checkpoint not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScienceT2IError(
            f"refusing to load {path}: it does not load with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Pickle "
            "files can run arbitrary code; convert it to .safetensors from a trusted "
            "environment, or use the safetensors release of the model.") from exc
