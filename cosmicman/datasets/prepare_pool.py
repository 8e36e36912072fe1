"""Samples of a version made ready for their shards by worker processes, handed back in order.

Reading a sample (its image and mask from the store) and preparing its members (the content checks, JSON, tar
headers, the caption's token count) is most of a build's time and needs nothing of any other sample; only
appending to a shard must follow the order. :func:`prepared_groups` hands groups of rows to ``workers``
processes, each holding the source and the tokenizer from its start, keeps at most ``IN_FLIGHT_PER_WORKER``
groups a worker in flight, and yields the prepared groups in the order the groups came. On an object store the
workers' reads overlap too. A write of fewer than ``PARALLEL_MIN_ROWS`` samples is prepared in this process:
starting the workers (~2 s) would cost more than they save.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

import polars as pl

from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.shards import PREPARED_ROWS, PreparedSamples, prepare_samples

IN_FLIGHT_PER_WORKER = 2  # one group being prepared, one waiting: a worker never idles while the writer appends
PARALLEL_MIN_ROWS = 16 * PREPARED_ROWS


class SampleSource(Protocol):
    def samples(self, rows: pl.DataFrame) -> Iterator[DatasetSample]:
        """The whole samples of ``rows``, in their order."""
        ...


def prepare_rows(source: SampleSource, rows: pl.DataFrame, tokenizer) -> PreparedSamples:
    """The samples of ``rows`` (``content_key`` among its columns), prepared."""
    return prepare_samples(zip(source.samples(rows), rows["content_key"].to_list(), strict=True), tokenizer)


_in_worker: dict[str, Any] = {}  # the source and tokenizer of this worker process, from its start


def _start_worker(source: SampleSource, tokenizer) -> None:
    _in_worker.update(source=source, tokenizer=tokenizer)


def _prepare_in_worker(rows: pl.DataFrame) -> PreparedSamples:
    return prepare_rows(_in_worker["source"], rows, _in_worker["tokenizer"])


def prepared_groups(
    source: SampleSource, groups: Iterable[pl.DataFrame], tokenizer, workers: int, rows: int
) -> Iterator[PreparedSamples]:
    """``groups`` (of ``rows`` rows in all) prepared by ``workers`` processes, in order; in this process when
    ``workers`` is 1 or ``rows`` is under ``PARALLEL_MIN_ROWS``. A sample that fails raises here, as it would
    in this process."""
    if workers <= 1 or rows < PARALLEL_MIN_ROWS:
        for group in groups:
            yield prepare_rows(source, group, tokenizer)
        return
    # spawn: a fork would copy Polars' and the tokenizer's thread pools in whatever state they are
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(source, tokenizer)) as pool:
        pending: deque[Future[PreparedSamples]] = deque()
        try:
            for group in groups:
                pending.append(pool.submit(_prepare_in_worker, group))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
