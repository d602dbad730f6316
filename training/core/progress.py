"""Progress of long headless jobs in the log (evaluations, batch generation)."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class EtaLog:
    """A progress line with the ETA in the log every ``every`` seconds (the bar shows it
    too, but logs of long headless runs keep only lines)."""

    def __init__(self, total: int, what: str, every: float = 30.0):
        self.total, self.what, self.every = total, what, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            rate = (now - self.start) / self.done
            log.info("%s: %d/%d, %.0f s elapsed, ETA %.0f s", self.what, self.done, self.total,
                     now - self.start, rate * (self.total - self.done))
            self.last = now
