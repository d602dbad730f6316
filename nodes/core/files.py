"""Safe file handling shared by every module: atomic writes and checked model loading."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ScienceT2IError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}

_import_umask: int | None = None


def _read_umask() -> int:
    """The process umask. Linux reports it in /proc, so it is read without changing it;
    elsewhere os.umask can only read it by setting it, which races with threads (ComfyUI's
    server) creating files meanwhile, so that is done once and remembered."""
    global _import_umask
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _import_umask is None:  # 0o022 meanwhile: a file created in between is not writable by all
        _import_umask = os.umask(0o022)
        os.umask(_import_umask)
    return _import_umask


_read_umask()  # where /proc has no umask: read it at import, before other threads start


def _usual_mode(st_mode: int, umask: int) -> int:
    """The mode open() / mkdir() gives: 0o666 for files (0o777 for folders and executables)
    less the umask."""
    full = 0o777 if stat.S_ISDIR(st_mode) or st_mode & 0o111 else 0o666
    return full & ~umask


def apply_default_modes(root: str | os.PathLike) -> None:
    """Give ``root`` and everything under it the usual modes. Temporary files and folders
    (mkstemp, mkdtemp, safetensors' writer) are private (0600/0700); renamed into place they
    would keep that, and a ComfyUI running as another user could not read them."""
    root, umask = Path(root), _read_umask()
    paths = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
    for p in paths:
        st = os.lstat(p)
        if not stat.S_ISLNK(st.st_mode):  # a link's mode is its target's business
            os.chmod(p, _usual_mode(st.st_mode, umask))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success.

    A crash or kill mid-write leaves the previous ``target`` untouched (rename is atomic on
    one filesystem), and never a half-written file under the real name. The file gets the
    usual permissions (0o666 less the umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the write: some writers (safetensors) replace the file with their own 0600 one
        apply_default_modes(tmp_path)
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


# ----------------------------------------------------------------------------- folder swaps
#
# Names beside a folder ``target`` while it is written or replaced (P = tmp_prefix):
#   P<name>-XXXXXXXX  a new copy being written (mkdtemp), or after an atomic exchange the
#                     replaced copy: never needed again once the swap is over
#   Pold-<name>       the previous copy, complete, moved aside where no atomic exchange exists
#   Pdel-<name>       a previous copy being deleted
# ``recover_directory`` turns any mix of these left by a kill back into ``target`` alone.

def _swap_call() -> tuple[Any, int] | None:
    """The C call that exchanges two paths atomically, with its flag; None if there is none."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):  # Windows: no C library handle
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):  # glibc >= 2.28
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
        return (lambda a, b, flag: fn(-100, a, -100, b, flag)), 2  # AT_FDCWD, RENAME_EXCHANGE
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return fn, 2  # RENAME_SWAP
    return None


_SWAP = _swap_call()


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one atomic step; False where the system
    or filesystem cannot (the caller then renames twice)."""
    if _SWAP is None:
        return False
    import ctypes
    call, flag = _SWAP
    if call(os.fsencode(a), os.fsencode(b), flag) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # e.g. NFS, some FUSE and overlay filesystems
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap_names(target: Path, tmp_prefix: str) -> tuple[Path, Path]:
    return (target.parent / f"{tmp_prefix}old-{target.name}",
            target.parent / f"{tmp_prefix}del-{target.name}")


def _delete_tree(path: Path) -> None:
    """Delete a folder (or file) if present. Callers only delete names that
    ``recover_directory`` deletes too, so a kill mid-delete leaves nothing that could be
    mistaken for a complete copy."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink()


def _finish_interrupted_swap(target: Path, tmp_prefix: str) -> None:
    """Complete or undo a replacement that a kill stopped between its renames."""
    old, trash = _swap_names(target, tmp_prefix)
    _delete_tree(trash)
    if old.is_dir():
        if target.exists():  # the new copy made it: the old one is only waiting for deletion
            os.replace(old, trash)
            _delete_tree(trash)
        else:  # killed between moving the old copy aside and the new one in: restore it
            os.replace(old, target)
        fsync_dir(target.parent)


def recover_directory(target: str | os.PathLike, tmp_prefix: str = ".tmp-") -> None:
    """Clean up what a killed ``atomic_directory`` / ``commit_directory`` of ``target`` left:
    an old copy moved aside is restored when ``target`` is missing, deleted otherwise, and
    unfinished new copies are deleted. Call it before writing ``target`` again or when a
    program that writes it starts; not while another process writes it."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    _finish_interrupted_swap(target, tmp_prefix)
    unfinished = re.compile(re.escape(f"{tmp_prefix}{target.name}-") + r"[a-z0-9_]{8}")
    for p in target.parent.iterdir():
        if unfinished.fullmatch(p.name):
            _delete_tree(p)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, tmp_prefix: str = ".tmp-") -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success flush it and swap it into place.

    A crash mid-write leaves the previous ``target`` folder as it was; the temporaries are
    named ``<tmp_prefix>...``, and leftovers of a killed earlier write are cleaned up first
    (``recover_directory``), so there is never more than one copy in the making.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target, tmp_prefix)
    tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix}{target.name}-", dir=target.parent))
    try:
        yield tmp
        commit_directory(tmp, target, tmp_prefix)
    except BaseException:
        _delete_tree(tmp)
        raise


def commit_directory(tmp: str | os.PathLike, target: str | os.PathLike,
                     tmp_prefix: str = ".tmp-") -> None:
    """Flush the finished folder ``tmp`` (files and entries) and rename it to ``target``.

    An existing ``target`` is exchanged with ``tmp`` in one atomic step where the system can
    (Linux, macOS), so at every instant ``target`` is the old or the new copy; elsewhere it is
    moved aside first, and a kill between the two renames is undone by
    ``recover_directory``. Several processes may have written into ``tmp``; only one calls
    this."""
    tmp, target = Path(tmp), Path(target)
    apply_default_modes(tmp)  # mkdtemp and safetensors make private (0700/0600) entries
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    _finish_interrupted_swap(target, tmp_prefix)
    if not target.exists():
        os.replace(tmp, target)
    elif _exchange(tmp, target):
        fsync_dir(target.parent)
        _delete_tree(tmp)  # now the replaced copy
    else:
        old, trash = _swap_names(target, tmp_prefix)
        os.replace(target, old)  # from here to the next rename there is no target:
        os.replace(tmp, target)  # recover_directory restores old if killed in between
        os.replace(old, trash)
        _delete_tree(trash)
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
