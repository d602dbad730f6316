"""Reading the text and JSON files a user gives (configs, datasets, prompt lists, metadata,
workflows): a file that is not UTF-8, broken JSON, or JSON nested deeper than the parser can
follow becomes an error naming the file and line and what to do."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...nodes.errors import ScienceT2IError


def parse_json(text: str, source: str | os.PathLike, *, line: int | None = None,
               fix: str = "fix or regenerate it") -> Any:
    """``json.loads`` for a file a user gave: broken JSON, or JSON nested deeper than the
    parser can follow (a RecursionError), becomes an error naming the file and line.
    ``line``: the line ``text`` came from in a JSON Lines file."""
    where = f"{source} line {line}" if line is not None else str(source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = (f"column {exc.colno}" if line is not None
              else f"line {exc.lineno}, column {exc.colno}")
        raise ScienceT2IError(f"{where} is not valid JSON ({exc.msg} at {at}); {fix}.") from None
    except RecursionError:
        raise ScienceT2IError(f"{where} is nested too deeply to read (lists or objects inside "
                              "each other beyond what the JSON reader can follow); no "
                              f"config, dataset or prompt file needs that: {fix}.") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A user's text file as UTF-8, with an error that names it when it is not text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScienceT2IError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start}); save it as UTF-8.") from None


def read_json(path: str | os.PathLike, what: str = "file",
              fix: str = "fix or regenerate it") -> Any:
    """``parse_json`` of a whole file."""
    return parse_json(read_text(path, what), f"{what} {path}", fix=fix)
