"""The pack's sha256 digests, one place for each kind of input.

- ``json_digest``: canonical JSON (sorted keys), the settings hash of the LoRA metadata's
  ``training_config_sha256``, the trainers' resume checks and the judge cache's keys;
- ``parts_digest``: several byte/text parts, NUL-separated (the latent cache's keys);
- ``bytes_sha256`` / ``file_sha256``: the content of images and files (streamed from disk).

The formats of these digests are part of the files the pack writes (caches, LoRA metadata):
changing one would orphan every existing cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def json_digest(obj: Any, length: int | None = None, *, compact: bool = True) -> str:
    """Hex sha256 of ``obj`` as JSON with sorted keys (values JSON cannot hold are written
    as str): compact separators, or (``compact=False``) ``json.dumps``' default ones.
    ``length`` keeps only that many leading hex digits."""
    separators = (",", ":") if compact else None
    text = json.dumps(obj, sort_keys=True, separators=separators, default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return digest[:length] if length else digest


def parts_digest(*parts: bytes | str, length: int = 32) -> str:
    """Hex sha256 of the parts (text as UTF-8), each followed by a NUL byte."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
