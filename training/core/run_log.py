"""Run log: one JSON line per logged step, and a curve PNG drawn from it."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ...nodes.core import atomic_path, write_bytes_atomic


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # torch / numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


class RunLog:
    """Append-only ``log.jsonl`` in ``output_dir`` (one object per line: step, time, metrics)."""

    def __init__(self, output_dir: str | Path, name: str = "log.jsonl"):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / name

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        entry = {"step": int(step), "time": round(time.time(), 3)}
        entry.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        return entry

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill mid-write
        return out

    def drop(self, unwanted: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite the log without the entries ``unwanted`` picks (atomic)."""
        kept = [r for r in self.records() if not unwanted(r)]
        write_bytes_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def truncate_after(self, step: int) -> None:
        """Drop entries past ``step`` (written after the checkpoint a resumed run starts from),
        so the log of a resumed run reads like one uninterrupted run."""
        self.drop(lambda r: int(r.get("step", 0)) > step)

    def plot(self, keys: Iterable[str], png_path: str | Path) -> Path:
        """Draw each metric in ``keys`` against the step, one panel per metric, as a PNG."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        keys = list(keys)
        records = self.records()
        fig = Figure(figsize=(6, 2.6 * max(1, len(keys))), dpi=100)
        for i, key in enumerate(keys):
            ax = fig.add_subplot(max(1, len(keys)), 1, i + 1)
            pts = [(r["step"], r[key]) for r in records
                   if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        if keys:
            fig.axes[-1].set_xlabel("step")
        fig.tight_layout()
        png_path = Path(png_path)
        with atomic_path(png_path) as tmp:
            fig.savefig(str(tmp), format="png")
        return png_path
