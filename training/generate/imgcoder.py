"""ImgCoder over a file of problems, resumable, into a folder eval-scigen reads directly.

Output layout (``out``): ``<id>.png`` per figure drawn, ``codes/<id>.py`` and
``plans/<id>.md`` for every problem tried (failed ones too, to inspect or edit), and
``imgcoder.jsonl`` with one line per problem and attempt run (ok, attempts, error, seconds).
A re-run skips ids whose PNG exists and tries the failed ones again.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...nodes import _comfy
from ...nodes.core import write_bytes_atomic
from ...nodes.errors import ScienceT2IError
from ...nodes.imgcoder import SandboxLimits, draw_figure
from ..core.progress import EtaLog
from ..eval.scigen.data import check_unique_ids, problem_text, record_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    id: str
    text: str
    image_type: str = ""


def load_problems(path: str | Path) -> list[Problem]:
    """Problems from a .txt file (one per line, id = line number) or any record layout with a
    problem text field (SciGenBench records: id, question / original_question, image_type)."""
    from ..core.datasets import read_rows
    path = Path(path)
    if path.suffix == ".txt":
        from ..core.readers import read_text
        lines = read_text(path, "prompts file").splitlines()
        problems = [Problem(str(n), line.strip()) for n, line in enumerate(lines, 1)
                    if line.strip()]
    else:
        rows, _ = read_rows(path, None)
        problems = []
        for i, row in enumerate(rows):
            rid = record_id(row, i)
            problems.append(Problem(rid, problem_text(row, rid),
                                    str(row.get("image_type") or "")))
    if not problems:
        raise ScienceT2IError(f"{path} holds no problems.")
    check_unique_ids([p.id for p in problems])
    return problems


def run_imgcoder(problems: list[Problem], backend: Any, out: Path, *, width: int, height: int,
                 dpi: int, repairs: int, limits: SandboxLimits | None = None,
                 draw: Callable[..., Any] = draw_figure) -> dict:
    """Draw every problem whose PNG is not there yet; returns counts."""
    out = Path(out)
    for sub in ("codes", "plans"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    todo = [p for p in problems if not (out / f"{p.id}.png").is_file()]
    done_before = len(problems) - len(todo)
    if done_before:
        log.info("imgcoder: %d of %d figures already drawn in %s; drawing the other %d",
                 done_before, len(problems), out, len(todo))
    counts = {"problems": len(problems), "skipped": done_before, "drawn": 0, "failed": 0}
    eta = EtaLog(len(todo), "imgcoder")
    with _comfy.Progress(len(todo), desc="imgcoder") as bar:
        for p in todo:
            start = time.monotonic()
            result = draw(backend, p.text, image_type=p.image_type, width=width, height=height,
                          dpi=dpi, repairs=repairs, limits=limits)
            write_bytes_atomic(out / "plans" / f"{p.id}.md", result.plan.encode("utf-8"))
            write_bytes_atomic(out / "codes" / f"{p.id}.py", result.code.encode("utf-8"))
            if result.ok:
                write_bytes_atomic(out / f"{p.id}.png", result.png)
                counts["drawn"] += 1
            else:
                counts["failed"] += 1
            entry = {"id": p.id, "ok": result.ok, "attempts": result.attempts,
                     "error": result.error, "seconds": round(time.monotonic() - start, 3),
                     "model": getattr(backend, "name", "?")}
            with open(out / "imgcoder.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            bar.update(1)
            eta.step()
            _comfy.check_interrupt()
    return counts
