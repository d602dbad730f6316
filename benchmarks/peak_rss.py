"""Resident-memory measurement shared by the training benchmarks (Linux /proc)."""
from __future__ import annotations

import os
import threading
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest resident set size seen while the block runs (sampled every ms)."""

    def __enter__(self) -> "PeakRSS":
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
