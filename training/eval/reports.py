"""What every evaluation report shares: cells of its Markdown tables, the per-task bar chart
(matplotlib's Agg canvas, never the global backend) and the atomic writing of
``<stem>.json``, ``<stem>.md`` and ``<stem>_per_task.png``."""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

from ..core.preflight import missing_modules, writing

log = logging.getLogger(__name__)


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal; "-" for a missing (None or NaN) value."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def num(x: float | None, fmt: str = "{:.2f}") -> str:
    """A number in ``fmt``; "-" for a missing (None or non-finite) value."""
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def charts_available() -> bool:
    """Whether matplotlib can draw the per-task chart. Checked before an evaluation starts:
    without it the results are still written (JSON and Markdown), only the chart is left out,
    with a warning saying how to get it."""
    missing = missing_modules(["matplotlib"])
    if missing:
        log.warning("matplotlib cannot be imported (%s): the results will be written as JSON "
                    "and Markdown without the per-task chart; pip install matplotlib to get "
                    "it.", missing["matplotlib"])
    return not missing


def bar_chart_png(groups: dict[str, dict[str, float | None]], title: str, ylabel: str) -> bytes:
    """Grouped bar chart (one group per task, one bar per series) as PNG bytes.

    Uses the Agg canvas directly, so it never touches the global matplotlib backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = list(groups)
    tasks = sorted({t for s in groups.values() for t in s})
    fig = Figure(figsize=(max(6.0, 0.6 * len(tasks) * max(1, len(series)) + 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(tasks))]
        ys = [groups[name].get(t) for t in tasks]
        ax.bar(xs, [0.0 if y is None or math.isnan(y) else y for y in ys], width, label=name)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(out_dir: Path, stem: str, data: dict, markdown: str, chart: bytes | None,
                 setting: str | None = None) -> list[Path]:
    """<stem>.json, <stem>.md and (unless ``chart`` is None) <stem>_per_task.png in
    ``out_dir``, each written atomically; returns the paths written. A full disk is reported
    naming the file and ``setting`` (the option that chose ``out_dir``)."""
    import json

    from ...nodes.core import write_bytes_atomic

    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}_per_task.png"]

    def clean(x: Any) -> Any:  # NaN is not JSON
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    contents = [json.dumps(clean(data), indent=2).encode("utf-8"), markdown.encode("utf-8"),
                chart]
    written = []
    for path, content in zip(paths, contents):
        if content is None:
            continue
        with writing(path, setting):
            write_bytes_atomic(path, content)
        written.append(path)
    return written
