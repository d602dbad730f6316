"""Preflight checks: faults from outside the pack's own logic, each turned into a
ScienceT2IError that says what to do: a device this machine lacks, an output folder that
cannot be written, a full disk, a missing optional package (files a user gives are read by
``readers``).

The checks run before any work, so a run never loads models only to fail on one of these.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ...nodes.errors import ScienceT2IError

TRAINING_EXTRA = ('pip install "comfyui-science-t2i[training]" (from a checkout: '
                  'pip install -e ".[training]")')


# ----------------------------------------------------------------------------- devices

def check_device(spec: str | None, flag: str = "--device") -> str:
    """``spec`` if this machine has that device ("auto" always passes), else an error naming
    it and the alternatives."""
    import torch
    text = (spec or "auto").strip()
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ScienceT2IError(f"{flag} {text!r} is not a device; use auto, cpu, cuda, cuda:N "
                              "or mps.") from None
    fix = f"use {flag} cpu, or {flag} auto (the GPU when there is one, else the CPU)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
            raise ScienceT2IError(f"{flag} {text}: no CUDA GPU is usable on this machine "
                                  f"(PyTorch {torch.__version__}, built with {build}); {fix}.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ScienceT2IError(f"{flag} {text}: this machine has {count} CUDA device(s), "
                                  f"cuda:0 to cuda:{count - 1}; pick one of those or use "
                                  f"{flag} auto.")
    elif device.type != "cpu":
        backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ScienceT2IError(f"{flag} {text}: this machine has no {device.type} device; "
                                  f"{fix}.")
    return text


# ----------------------------------------------------------------------------- output folders

def check_output_dir(path: str | os.PathLike, setting: str) -> Path:
    """``path`` as a Path when it is, or can be made, a writable folder; checked without
    creating anything (a failed run should leave no empty folder behind)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ScienceT2IError(f"{setting} {path} is an existing file, not a folder; point "
                              f"{setting} at a folder (it is created when missing) or move the "
                              "file away.")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ScienceT2IError(f"{setting} {path} cannot be created: {existing} is a file, not "
                              f"a folder; choose another {setting}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScienceT2IError(f"{setting} {path} is not writable: no permission to write in "
                              f"{existing}; choose a folder you can write to or fix its "
                              "permissions.")
    _probe_folder(path, existing, setting)
    return path


def _probe_folder(path: Path, existing: Path, setting: str) -> None:
    """Make and remove a folder in the nearest existing parent of ``path`` (or a file in
    ``path`` when it exists): permission bits say nothing for root, nor for folders such as /proc whose
    entries no one can create."""
    try:
        if existing == path:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".science_t2i-probe-")
            os.close(fd)
            os.unlink(probe)
        else:   # a folder of its own: processes launched together probe at once
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".science_t2i-probe-"))
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, path, setting) from None
        raise ScienceT2IError(f"{setting} {path} cannot be written ({exc.strerror or exc}); "
                              f"choose a folder you can write to.") from None


# ----------------------------------------------------------------------------- full disk

def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed write to a full disk or quota.
    Libraries that write through their own code (safetensors, torch.save) wrap the OS error
    in their own exception, keeping only its text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "StorageFull" in text or \
                "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            break
        n /= 1024
    else:
        unit = "TiB"
    return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"


def disk_full_error(exc: BaseException, where: str | os.PathLike | None,
                    setting: str | None = None) -> ScienceT2IError:
    """The message for a write that failed on a full disk: which file or folder, how much
    space is left there, and where to look."""
    target = getattr(exc, "filename", None) or where
    folder = Path(target).expanduser() if target else Path.cwd()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    quota = isinstance(exc, OSError) and exc.errno == errno.EDQUOT
    what = "the disk quota is used up" if quota else "the disk is full"
    elsewhere = f" or point {setting} at another disk" if setting else ""
    return ScienceT2IError(
        f"{what} (no space left on device) while writing {target or 'the output'} "
        f"({free} on the disk holding {folder}); free some space there{elsewhere} and run "
        "again.")


@contextlib.contextmanager
def writing(where: str | os.PathLike, setting: str | None = None) -> Iterator[None]:
    """Report a full disk met inside the block as a ScienceT2IError naming ``where`` (the
    file or folder being written) and the ``setting`` that chose it."""
    try:
        yield
    except ScienceT2IError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full_error(exc, where, setting) from exc


# ----------------------------------------------------------------------------- optional packages

def missing_modules(names: Iterable[str]) -> dict[str, str]:
    """The modules of ``names`` that cannot be imported, each with the reason."""
    missing = {}
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing[name] = str(exc)
    return missing


def require_modules(names: Iterable[str], what: str, alternative: str = "") -> None:
    """Refuse to start ``what`` without the packages it imports, saying how to install them
    (the training extra, or ``alternative``)."""
    missing = missing_modules(names)
    if not missing:
        return
    listed = ", ".join(missing)
    reasons = "; ".join(f"{k}: {v}" for k, v in missing.items())
    raise ScienceT2IError(f"{what} needs {listed}, which cannot be imported ({reasons}): "
                          f"{TRAINING_EXTRA}{alternative}.")
