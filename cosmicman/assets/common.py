"""Small helpers the assets share: partitions, data versions, progress logging (metadata: ``metadata.py``,
charts and image grids: ``plots.py``)."""

import hashlib
import time
from collections.abc import Iterable

import dagster as dg

sourcing_batches = dg.DynamicPartitionsDefinition(name="sourcing_batches")


def content_digest(items: Iterable[str]) -> str:
    """Order-independent digest of a set of ids: the data version of a table keyed by them."""
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


class Progress:
    """Logs "label: done/total" at most every ``every_s`` seconds and at the end."""

    def __init__(self, log: dg.DagsterLogManager, label: str, total: int, every_s: float = 5.0) -> None:
        self.log, self.label, self.total, self.every_s = log, label, total, every_s
        self._last = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.log.info(f"{self.label}: {done}/{self.total}")
