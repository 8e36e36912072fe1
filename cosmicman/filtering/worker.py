"""A filter worker process: the chain it loads once for every shard it runs, and the threads it computes on.

Loading is per process, not per shard: a worker that runs several shards (the in-process executor runs a
batch's shards one after another in one process; a long-lived pod may run many) loads the detectors once
and reuses them while what decides the decisions is unchanged (the shard's fingerprint: filter config,
fake-person head, code version). One chain is held at a time, so a worker moving to another config frees
the old models before loading the new ones.

Threads: shards, not threads, share out the cores (the multiprocess executor runs filter steps side by
side, as many as the machine has cores unless told otherwise), so a shard computes on ``threads`` OpenCV
and torch threads, one by default: with the libraries' default of one thread per core, two shards on two
cores would run four busy threads on two cores. A batch uses more cores by being cut into more shards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import cv2

_Chain = TypeVar("_Chain")

# (fingerprint, chain) of the chain this process holds; None until a shard loads one
_LOADED: tuple[str, Any] | None = None


def worker_chain(fingerprint: str, load: Callable[[], _Chain]) -> _Chain:
    """The chain for ``fingerprint``: loaded by ``load`` the first time in this process, then reused."""
    global _LOADED
    if _LOADED is None or _LOADED[0] != fingerprint:
        _LOADED = None  # drop the old chain's models before the new ones load
        _LOADED = (fingerprint, load())
    return _LOADED[1]


@contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """OpenCV and torch (when loaded, e.g. by a production backend) on ``threads`` threads inside the block;
    the previous counts come back afterwards, so a process that does other work keeps its settings."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch = sys.modules.get("torch")
    before_cv2 = cv2.getNumThreads()
    before_torch = torch.get_num_threads() if torch is not None else None
    cv2.setNumThreads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before_cv2)
        if torch is not None and before_torch is not None:
            torch.set_num_threads(before_torch)
