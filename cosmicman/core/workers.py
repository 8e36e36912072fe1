"""A pool of forked worker processes for pure per-index tasks (feature extraction, head fitting, rendering)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

WORKERS_ENV = "COSMICMAN_WORKERS"  # how many processes map_in_workers uses; unset: every core this process may use

_T = TypeVar("_T")
# The task forked workers run. Set only while map_in_workers runs, so workers inherit it instead of
# unpickling it (with the arrays, images or synthetic world it reads); set in a worker, it keeps that
# worker from forking workers of its own.
_FORKED_TASK: Callable[[int], Any] | None = None


def _worker_count() -> int:
    configured = os.environ.get(WORKERS_ENV)
    if configured:
        return max(int(configured), 1)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker() -> None:
    """One torch thread per worker: the workers already share out the cores."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    """OpenCV on one thread here while workers fork: a forked worker inherits OpenCV's thread pool
    without its threads, and waits on them forever (seen in ``cv2.setNumThreads``); with the pool
    stopped, workers inherit none and run OpenCV in their own thread. The pool restarts afterwards."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _run_forked_task(index: int) -> Any:
    assert _FORKED_TASK is not None
    return _FORKED_TASK(index)


def map_in_workers(task: Callable[[int], _T], n: int, min_per_worker: int = 1) -> list[_T]:
    """``[task(0), ..., task(n - 1)]``, computed by a pool of forked worker processes (``WORKERS_ENV``).

    ``task`` must be a pure function of its index, so the results do not depend on the number of
    workers. Workers are forked, so the task and what it reads are inherited, not pickled; only the
    results travel back. Runs here, in order, with one worker, inside a worker, or with fewer than
    ``min_per_worker`` tasks per worker (below that, forking costs more than it saves).
    """
    global _FORKED_TASK
    workers = min(_worker_count(), n // max(min_per_worker, 1))
    if workers <= 1 or _FORKED_TASK is not None:
        return [task(i) for i in range(n)]
    _FORKED_TASK = task
    try:
        with (
            _opencv_single_threaded(),
            ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker
            ) as pool,
        ):
            return list(pool.map(_run_forked_task, range(n), chunksize=max(1, n // (8 * workers))))
    finally:
        _FORKED_TASK = None
