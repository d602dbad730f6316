"""Where a model comes from: the one resolver every loader uses, and the Hub downloads.

A model is named by a path, by a name inside one of ComfyUI's model folders (``models/<kind>``),
or by a Hugging Face Hub id (``namespace/name``, as ``huggingface_hub`` validates it). A Hub
id is first looked for as ``models/<kind>/<repo name>/`` (where the pack downloads it, and
where the ``hf download`` commands in its messages put it).

Downloads (SciScore, GroundingDINO, CLIP) go into ``<target>.partial`` beside the target,
renamed into place only once complete, so a folder under the model's name is always a whole
model. Offline, or when the download fails before any data arrived, nothing is created; the
error gives the ``hf download`` command that fetches the same files.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
from pathlib import Path
from typing import Sequence

from .. import _comfy
from ..errors import ScienceT2IError
from .files import commit_directory

log = logging.getLogger("science_t2i")


# names ending like a model file name a file (in a models folder), never a Hub repository
_FILE_SUFFIXES = (".safetensors", ".json", ".pth", ".pt", ".bin", ".ckpt", ".gguf")


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` is a Hub repository id (``namespace/name``, by huggingface_hub's own
    ``validate_repo_id``) rather than a path: not an existing path, not starting with ``.``,
    ``~`` or ``/``, not ending like a model file."""
    name = str(name).strip()
    if name.count("/") != 1 or name.startswith((".", "~", "/")) \
            or name.lower().endswith(_FILE_SUFFIXES) or Path(name).expanduser().exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def repo_folder(kind: str, repo_id: str) -> Path:
    """Where the pack downloads ``repo_id`` for folder ``kind``: models/<kind>/<repo name>."""
    return _comfy.default_folder(kind) / repo_id.split("/")[-1]


def local_model(kind: str, name: str, *, marker: str | None = None) -> Path | None:
    """``name`` on disk: a path, a name inside one of the ``kind`` model folders, or a Hub id
    already downloaded as ``<folder>/<repo name>/`` (holding ``marker`` when given, else
    anything). None when it is not on disk."""
    name = str(name).strip()
    path = _comfy.resolve_model(kind, name) if name else None
    if path is not None or not looks_like_hub_id(name):
        return path
    for root in _comfy.folder_paths_for(kind):
        folder = root / name.split("/")[-1]
        if folder.is_dir() and ((folder / marker).is_file() if marker else any(folder.iterdir())):
            return folder
    return None


def download_model(kind: str, repo_id: str, patterns: Sequence[str], what: str,
                   required: str | None = None) -> Path:
    """Download ``repo_id`` into models/<kind>/<repo name> (see ``download_repo``)."""
    return download_repo(repo_id, repo_folder(kind, repo_id), patterns, what, required)


def in_hub_cache(repo_id: str, filename: str = "config.json") -> bool:
    """Whether the Hugging Face cache holds ``filename`` of ``repo_id`` (usable offline)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # an id the hub library refuses (HFValidationError): not cached
        return False


def _quote(arg: str) -> str:
    """An argument as the user's shell needs it: POSIX quoting, or plain double quotes for
    Windows shells (which do not expand ``*``)."""
    if os.name == "nt":
        return f'"{arg}"' if " " in arg else arg
    return shlex.quote(arg)


def download_command(repo_id: str, target: str | os.PathLike,
                     patterns: Sequence[str] = ()) -> str:
    """The command of huggingface_hub's CLI (``hf``) that fetches what the pack downloads."""
    parts = ["hf", "download", repo_id, "--local-dir", _quote(os.fspath(target))]
    for pattern in patterns:
        parts += ["--include", _quote(pattern)]
    return " ".join(parts)


def hub_offline() -> bool:
    """huggingface_hub's offline switch: its constant (read when it was imported) or the
    environment variables as they are now."""
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _has_data(folder: Path) -> bool:
    return folder.is_dir() and any(f.is_file() and f.stat().st_size for f in folder.rglob("*"))


def _discard(partial: Path, created: list[Path], keep_data: bool) -> bool:
    """Remove what a failed download made: the partial folder (kept when ``keep_data`` and it
    holds downloaded bytes, which the next attempt resumes from) and the folders created
    for it. Returns whether the partial folder was kept."""
    kept = keep_data and _has_data(partial)
    if not kept:
        shutil.rmtree(partial, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty (something else is in it): leave it
                break
    return kept


def download_repo(repo_id: str, target: str | os.PathLike, patterns: Sequence[str], what: str,
                  required: str | None = None) -> Path:
    """Download the files of ``repo_id`` matching ``patterns`` into the folder ``target``
    (replacing it), atomically; ``required``: a file the download must contain.
    ``what`` names the model in errors ("SciScore model", "GroundingDINO model")."""
    target = Path(target)
    command = download_command(repo_id, target, patterns)
    how = (f"Download it where there is internet access with:\n  {command}\nthen copy the "
           f"folder to {target} (or put the files of https://huggingface.co/{repo_id} there).")
    if hub_offline():  # checked first: a download attempt would create the folders
        raise ScienceT2IError(f"{what} {repo_id} is not in {target.parent} and offline mode "
                              f"(HF_HUB_OFFLINE) is on, so it cannot be downloaded. {how}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ScienceT2IError(f"huggingface_hub is not installed, so {repo_id} cannot be "
                              f"downloaded. {how}") from exc
    partial = target.with_name(target.name + ".partial")
    created = _missing_folders(target.parent)
    log.info("downloading %s into %s", repo_id, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        snapshot_download(repo_id=repo_id, local_dir=str(partial),
                          allow_patterns=list(patterns) or None)
    except Exception as exc:  # no network, unknown repo, disk full, ...
        kept = _discard(partial, created, keep_data=True)
        resume = (f" The files downloaded so far are in {partial}; the next attempt continues "
                  "from them (delete that folder to start over)." if kept else "")
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ScienceT2IError(f"could not download {what} {repo_id} ({type(exc).__name__}: "
                              f"{reason}).{resume} {how}") from exc
    if required and not (partial / required).is_file():
        _discard(partial, created, keep_data=False)
        raise ScienceT2IError(f"the download of {repo_id} has no {required}, so it is not a "
                              f"{what} in the expected layout; check the repo id. {how}")
    commit_directory(partial, target)  # usual permissions, flushed, renamed into place
    return target
