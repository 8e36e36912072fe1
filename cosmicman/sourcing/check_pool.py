"""The ingest's per-file check (``check_image``) on worker processes, or inline for small batches.

Items travel to the workers in tasks of ``per_task``: one pickling and one hand-back of results for several
images, because a process pool's cost per task is about what one check costs. At most ``window`` tasks are in
flight, so memory stays bounded whatever the batch's size. Each item carries a ticket (what the caller needs to
place its result), returned beside the item's bytes and its check.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Generic, TypeVar

from cosmicman.core.imageio import CheckedImage, check_image

Ticket = TypeVar("Ticket")


def check_images(items: list[tuple[bytes, str | None]], resize_to: int | None, phash_scheme: str) -> list[CheckedImage]:
    """``check_image`` over one task's items (bytes, claimed extension), in a worker process."""
    return [check_image(data, resize_to, claimed, phash_scheme) for data, claimed in items]


class CheckPool(Generic[Ticket]):
    """Checks items on ``workers`` processes (the pool starts once per batch; 0: inline), in tasks of ``per_task``;
    results come back as (ticket, bytes, check) in completion order."""

    def __init__(self, workers: int, resize_to: int | None, phash_scheme: str, per_task: int = 8) -> None:
        self.resize_to, self.phash_scheme, self.per_task = resize_to, phash_scheme, per_task
        self.pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 0 else None
        )
        self.window = max(1, workers * 3)
        self.gathering: list[tuple[Ticket, bytes, str | None]] = []
        self.in_flight: dict[Future, list[tuple[Ticket, bytes, str | None]]] = {}

    def submit(
        self, ticket: Ticket, data: bytes, claimed_ext: str | None
    ) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        """Queue one item; yields the results that are ready (all of them, inline)."""
        if self.pool is None:
            yield ticket, data, check_image(data, self.resize_to, claimed_ext, self.phash_scheme)
            return
        self.gathering.append((ticket, data, claimed_ext))
        if len(self.gathering) >= self.per_task:
            self._send()
        if len(self.in_flight) >= self.window:
            yield from self._collect()

    def drain(self) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        """Every result still owed."""
        if self.gathering:
            self._send()
        while self.in_flight:
            yield from self._collect()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _send(self) -> None:
        assert self.pool is not None
        task, self.gathering = self.gathering, []
        items = [(data, claimed) for _, data, claimed in task]
        self.in_flight[self.pool.submit(check_images, items, self.resize_to, self.phash_scheme)] = task

    def _collect(self) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
        for future in done:
            task = self.in_flight.pop(future)
            for (ticket, data, _), checked in zip(task, future.result(), strict=True):
                yield ticket, data, checked
