"""Figure sandbox overhead: the 10 real figure programs of tests/figures/, side by side in one run.

For each figure, the best of --repeats renders:
- in-process: ``exec`` of the code with Agg in this process, then the sandbox's own sizing and
  ``savefig`` (what rendering costs without any isolation);
- sandbox, warm: ``SandboxPool.render`` with a started spare child waiting (the pool's normal
  state between an ImgCoder model call and the next);
- sandbox, cold: a new child each time (interpreter + matplotlib start-up + warm-up figure).
Prints ms per figure, the overhead of each sandbox path over in-process (ms and ratio), whether
the sandbox's PNG is byte-identical to the in-process one, and the warm target (<= 150 ms of
overhead per figure).

    python benchmarks/sandbox.py [--repeats 3] [--width 1024] [--height 768] [--dpi 100]
"""
from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / "tests" / "figures"
TARGET_MS = 150.0


def render_in_process(code: str, width: int, height: int, dpi: int) -> tuple[float, bytes]:
    """The sandbox child's steps without the sandbox: same rc, seeds, sizing and savefig."""
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np
    matplotlib.rcdefaults()
    matplotlib.rcParams["svg.hashsalt"] = "science-t2i"
    random.seed(0)
    np.random.seed(0)
    start = time.perf_counter()
    exec(compile(code, "<figure code>", "exec"), {"__name__": "__main__"})  # noqa: S102
    figure = plt.gcf()
    figure.set_dpi(dpi)
    figure.set_size_inches((width + 1e-3) / dpi, (height + 1e-3) / dpi, forward=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    seconds = time.perf_counter() - start
    plt.close("all")
    return seconds, buffer.getvalue()


def measure(pool, code: str, size: dict, limits) -> tuple[float, bytes]:
    pool.wait_ready(120)  # a warm spare, or (spares=0) nothing to wait for
    start = time.perf_counter()
    result = pool.render(code, **size, limits=limits)
    seconds = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"sandbox render failed: {result.error}")
    return seconds, result.png


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="renders per figure and path "
                    "(best is reported)")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--dpi", type=int, default=100)
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg")
    from science_t2i.nodes.imgcoder.sandbox import SandboxLimits, SandboxPool

    size = {"width": args.width, "height": args.height, "dpi": args.dpi}
    limits = SandboxLimits()
    figures = sorted(FIGURES.glob("*.py"))
    for path in figures:  # warm this process's imports, fonts and caches, like the children's
        render_in_process(path.read_text(encoding="utf-8"), **size)
    rows = []
    with SandboxPool(spares=1) as warm, SandboxPool(spares=0) as cold:
        warm.prestart()
        for path in figures:
            code = path.read_text(encoding="utf-8")
            local, sandboxed, fresh = [], [], []
            for _ in range(args.repeats):
                local.append(render_in_process(code, **size))
                sandboxed.append(measure(warm, code, size, limits))
                fresh.append(measure(cold, code, size, limits))
            same = all(png == local[0][1] for _, png in sandboxed + fresh)
            rows.append((path.stem, min(t for t, _ in local), min(t for t, _ in sandboxed),
                         min(t for t, _ in fresh), same))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(figures)} figures at {args.width}x{args.height} px, {args.dpi} dpi; best of "
          f"{args.repeats}; Python {sys.version.split()[0]}, matplotlib "
          f"{matplotlib.__version__}; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'figure':16} {'in-process':>11} {'sandbox warm':>13} {'cold start':>11} "
          f"{'warm overhead':>14} {'warm/in':>8} {'cold/in':>8} {'same PNG':>9}")
    for name, local, sandboxed, fresh, same in rows:
        print(f"{name:16} {local * 1e3:8.1f} ms {sandboxed * 1e3:10.1f} ms "
              f"{fresh * 1e3:8.1f} ms {(sandboxed - local) * 1e3:11.1f} ms "
              f"{sandboxed / local:7.2f}x {fresh / local:7.2f}x {'yes' if same else 'NO':>9}")
    mean = [statistics.fmean(r[i] for r in rows) for i in (1, 2, 3)]
    overhead = (mean[1] - mean[0]) * 1e3
    print(f"{'mean':16} {mean[0] * 1e3:8.1f} ms {mean[1] * 1e3:10.1f} ms {mean[2] * 1e3:8.1f} ms "
          f"{overhead:11.1f} ms {mean[1] / mean[0]:7.2f}x {mean[2] / mean[0]:7.2f}x")
    worst = max((r[2] - r[1]) * 1e3 for r in rows)
    verdict = "met" if overhead <= TARGET_MS else "NOT met"
    print(f"warm sandbox overhead: {overhead:.1f} ms per figure on average, {worst:.1f} ms at "
          f"most; target <= {TARGET_MS:.0f} ms: {verdict}")
    print(f"cold start overhead: {(mean[2] - mean[0]) * 1e3:.1f} ms per figure on average")


if __name__ == "__main__":
    sys.exit(main())
