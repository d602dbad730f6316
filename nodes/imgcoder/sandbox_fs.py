"""The sandbox's folders, seen from the parent: removing what a render left (however deep,
however it set its permissions) and giving each render a fresh matplotlib config folder.

Each child gets ``<its folder>/.mpl`` as MPLCONFIGDIR, never one shared with another render.
So that the child need not rebuild matplotlib's font list, the list is copied in from
``<pool>/mpl-master``, which only ever receives the list of a child that has not yet run any
code (read by the parent the moment the child says READY).
"""
from __future__ import annotations

import json
import os
import stat
import tempfile

MPL_DIR = ".mpl"
_FONT_LIST_MAX = 8 << 20


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything under it without recursion and relative to open folder
    descriptors (a tree thousands of folders deep, past any path-length limit), without
    following links, making unreadable folders readable on the way."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        os.chmod(path, 0o700)
        stack = [(os.open(path, flags), None)]
    except FileNotFoundError:
        return
    while stack:
        fd, _name = stack[-1]
        child = None
        for name in os.listdir(fd):
            try:
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.chmod(name, 0o700, dir_fd=fd)
                    child = (os.open(name, flags, dir_fd=fd), name)
                    break
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
        if child is not None:
            stack.append(child)
            continue
        stack.pop()
        os.close(fd)
        if stack:
            try:
                os.rmdir(_name, dir_fd=stack[-1][0])
            except FileNotFoundError:
                pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _font_lists(folder: str) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.startswith("fontlist-") and n.endswith(".json")]
    except OSError:
        return []


def seed(folder: str, master: str) -> str:
    """Make ``folder``'s fresh matplotlib config folder, with the master font list in it."""
    mpl = os.path.join(folder, MPL_DIR)
    os.mkdir(mpl, 0o700)
    for name in _font_lists(master):
        with open(os.path.join(master, name), "rb") as src, \
                open(os.path.join(mpl, name), "wb") as dst:
            dst.write(src.read(_FONT_LIST_MAX))
    return mpl


def keep_font_list(child_folder: str, master: str) -> None:
    """Copy the font list a just-started child built into the master, if the master has none
    yet (call only before the child has received code)."""
    if _font_lists(master):
        return
    mpl = os.path.join(child_folder, MPL_DIR)
    for name in _font_lists(mpl):
        path = os.path.join(mpl, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(_FONT_LIST_MAX + 1)
            if len(data) > _FONT_LIST_MAX or not isinstance(json.loads(data), dict):
                continue
        except (OSError, ValueError, RecursionError):
            continue
        fd, tmp = tempfile.mkstemp(dir=master, prefix=".fontlist-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(master, name))
