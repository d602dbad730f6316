"""A resumable cache of judge replies: one JSON line per reply, appended and synced.

Keyed by what determines the reply: the protocol, the record, the SHA-256 of the image bytes
the judge saw, the judge (backend and model) and the prompt version; so a re-run after a
crash, a timeout or Ctrl-C asks only what is missing, and a regenerated image or another
judge is asked afresh. Only replies that arrived are cached: a call that failed after its
retries is asked again next time. A line cut short by a crash is skipped with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ...nodes.core import bytes_sha256, file_sha256, json_digest

log = logging.getLogger(__name__)


def image_digest(ref: Any) -> str:
    """SHA-256 of what the judge sees of a dataset image (an ImageRef): its encoded bytes, or
    its file's."""
    if getattr(ref, "data", None) is not None:
        return bytes_sha256(ref.data)
    return file_sha256(ref.path)


def cache_key(*parts: Any) -> str:
    return json_digest(list(parts), compact=False)


class JudgeCache:
    """Replies by key, backed by a JSONL file (None: in memory only)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self._cut_line = False  # the file ends mid-line (a crash): start on a fresh line
        if self.path and self.path.is_file():
            self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                self._cut_line = f.read(1) != b"\n"
        bad = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    bad += 1
        if bad:
            log.warning("%s: skipped %d unreadable line(s) (a run stopped mid-write); those "
                        "replies will be asked again", self.path, bad)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:  # an empty cache is still a cache (``cache or ...``)
        return True

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
            return None if entry is None else entry["reply"]

    def put(self, key: str, reply: str, **info: Any) -> None:
        entry = {"key": key, "reply": reply, **info}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self._entries[key] = entry
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one write of a whole line, synced: a crash loses at most the line being written
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if self._cut_line else "") + line)
                self._cut_line = False
                f.flush()
                os.fsync(f.fileno())

    def ask(self, key: str, call, **info: Any) -> str:
        """The cached reply for ``key``, else ``call()``'s, which is then cached."""
        cached = self.get(key)
        if cached is not None:
            return cached
        reply = call()
        self.put(key, reply, **info)
        return reply
