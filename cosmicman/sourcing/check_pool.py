"""The ingest's per-file check (``check_image``) on worker processes, or inline for small batches.

The parent shares the cores with the checks, so what it spends per image counts against the batch's rate. A process
pool (concurrent.futures) pickles every image's bytes and pushes them through a 64 KiB pipe on a feeder thread, then
hands each result back through a management thread: several copies and thread wakeups per image. Here the parent's own
thread copies a task's bytes into a buffer shared with the worker and sends it a few bytes saying where each item lies;
the worker checks the items straight from that buffer and answers on its socket, read when the parent waits for it.

Items travel in tasks of ``per_task``: one message and one answer for several images. Each worker has ``depth`` slots,
a task in each at most (one being checked while the next waits, so a worker never waits for the parent), and answers
its tasks in the order sent. A slot's buffer is a memfd (anonymous shared memory; not /dev/shm, whose 64 MiB in a
default container a few large downloads would exceed; an unlinked temporary file where there is no memfd) as large as
the largest task it has carried: a larger task gets a new one, whose descriptor goes to the worker over its socket.
Memory stays bounded by the tasks in flight. Each item carries a ticket (what the caller needs to place its result),
returned beside the item's bytes and its check.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from typing import Generic, TypeVar

from cosmicman.core.imageio import CheckedImage, check_image

Ticket = TypeVar("Ticket")
# A slot's first buffer; a task larger than its buffer gets one twice as large, or as large as the task.
FIRST_BUFFER_BYTES = 1 << 20
STOP_TIMEOUT_S = 10.0


def _shared_memory_fd() -> int:
    """A descriptor of new memory the parent and a worker both map: a memfd on Linux; elsewhere (macOS, where a
    developer may run the embedded default) an unlinked temporary file, which the page cache holds."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("cosmicman-check")
    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


class CheckWorkerDied(RuntimeError):
    """A check worker ended without answering (killed, out of memory): the batch cannot know its items' verdicts."""


def _serve(conn: Connection, resize_to: int | None, phash_scheme: str) -> None:
    """A worker's loop: ``(slot, new_buffer_bytes, [(offset, length, claimed_ext), ...])`` in, the checks out, until
    None or the parent's end closes. When ``new_buffer_bytes`` is set, the slot's new buffer's descriptor follows."""
    buffers: dict[int, mmap.mmap] = {}
    while True:
        try:
            task = conn.recv()
            if task is None:
                return
            slot, new_buffer_bytes, items = task
            if new_buffer_bytes is not None:
                fd = recv_handle(conn)
                if slot in buffers:
                    buffers[slot].close()
                buffers[slot] = mmap.mmap(fd, new_buffer_bytes)
                os.close(fd)
        except (EOFError, OSError):  # the parent is gone
            return
        buffer = buffers[slot]
        try:
            # slicing an mmap copies the item out: one bytes object, as check_image takes
            answer: list[CheckedImage] | Exception = [
                check_image(buffer[offset : offset + length], resize_to, claimed, phash_scheme)
                for offset, length, claimed in items
            ]
        except Exception as exc:  # check_image never raises; should it, the parent raises it for the batch
            answer = exc
        try:
            conn.send(answer)
        except OSError:  # the parent is gone
            return


@dataclass
class _Slot(Generic[Ticket]):
    buffer: mmap.mmap | None = None
    task: list[tuple[Ticket, bytes, str | None]] | None = None  # in the worker's hands when set


@dataclass
class _Worker(Generic[Ticket]):
    process: multiprocessing.process.BaseProcess
    conn: Connection
    slots: list[_Slot[Ticket]]
    sent: deque[int] = field(default_factory=deque)  # slots of the tasks in its hands, oldest first (its answer order)


class CheckPool(Generic[Ticket]):
    """Checks items on ``workers`` processes (started once per batch; 0: inline), in tasks of ``per_task``, ``depth``
    tasks a worker at most; results come back as (ticket, bytes, check) in completion order."""

    def __init__(
        self, workers: int, resize_to: int | None, phash_scheme: str, per_task: int = 8, depth: int = 3
    ) -> None:
        self.resize_to, self.phash_scheme, self.per_task = resize_to, phash_scheme, per_task
        ctx = multiprocessing.get_context("spawn")  # the parent runs threads (the fetch loop): no fork
        self.workers: list[_Worker[Ticket]] = []
        try:
            for _ in range(workers):
                conn, child_conn = ctx.Pipe(duplex=True)  # a socket pair: it carries descriptors too
                process = ctx.Process(target=_serve, args=(child_conn, resize_to, phash_scheme), daemon=True)
                process.start()
                child_conn.close()
                self.workers.append(_Worker(process, conn, [_Slot() for _ in range(depth)]))
        except BaseException:
            self.close()
            raise
        self.gathering: list[tuple[Ticket, bytes, str | None]] = []

    def submit(
        self, ticket: Ticket, data: bytes, claimed_ext: str | None
    ) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        """Queue one item; yields the results that are ready (all of them, inline)."""
        if not self.workers:
            yield ticket, data, check_image(data, self.resize_to, claimed_ext, self.phash_scheme)
            return
        self.gathering.append((ticket, data, claimed_ext))
        if len(self.gathering) >= self.per_task:
            yield from self._send()

    def drain(self) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        """Every result still owed."""
        if self.gathering:
            yield from self._send()
        while any(w.sent for w in self.workers):
            yield from self._collect(timeout=None)

    def close(self) -> None:
        """Stop the workers: at once when tasks are still in their hands (the batch is ending early)."""
        for worker in self.workers:
            if worker.sent:
                worker.process.terminate()
            elif worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    worker.process.terminate()  # it is going already
        for worker in self.workers:
            worker.process.join(STOP_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
            for slot in worker.slots:
                if slot.buffer is not None:
                    slot.buffer.close()
        self.workers = []

    def _send(self) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        """Hand the gathered items to the least busy worker. First the answers already in: a worker whose answer does
        not fit its socket's buffer (resized copies) waits until it is read. Then, while every slot is taken, waiting
        for answers."""
        yield from self._collect(timeout=0)
        while not (free := [w for w in self.workers if len(w.sent) < len(w.slots)]):
            yield from self._collect(timeout=None)
        worker = min(free, key=lambda w: len(w.sent))
        index = next(i for i, s in enumerate(worker.slots) if s.task is None)
        slot = worker.slots[index]
        task, self.gathering = self.gathering, []
        size = sum(len(data) for _, data, _ in task)
        fd = None
        if slot.buffer is None or len(slot.buffer) < size:
            fd = _shared_memory_fd()
            os.ftruncate(fd, max(size, 2 * len(slot.buffer) if slot.buffer is not None else FIRST_BUFFER_BYTES))
            if slot.buffer is not None:
                slot.buffer.close()
            slot.buffer = mmap.mmap(fd, 0)
        try:
            items, offset = [], 0
            for _, data, claimed in task:
                slot.buffer[offset : offset + len(data)] = data
                items.append((offset, len(data), claimed))
                offset += len(data)
            worker.conn.send((index, None if fd is None else len(slot.buffer), items))
            if fd is not None:
                send_handle(worker.conn, fd, worker.process.pid)
        except OSError as exc:  # its end of the socket is closed
            raise CheckWorkerDied(f"check worker {worker.process.pid} is gone ({exc})") from exc
        finally:
            if fd is not None:
                os.close(fd)  # the mapping and the worker's copy of the descriptor keep the memory
        slot.task = task
        worker.sent.append(index)

    def _collect(self, timeout: float | None) -> Iterator[tuple[Ticket, bytes, CheckedImage]]:
        """The results of every answer that is in, waiting up to ``timeout`` (None: until one is) for the first."""
        busy = [w for w in self.workers if w.sent]
        ready = wait([w.conn for w in busy], timeout) if busy else []
        for worker in (w for w in busy if w.conn in ready):
            try:
                answer = worker.conn.recv()
            except (EOFError, OSError):  # closed; reset when it died with our tasks unread
                raise CheckWorkerDied(
                    f"check worker {worker.process.pid} ended before answering; unanswered tasks: {len(worker.sent)}"
                ) from None
            if isinstance(answer, Exception):
                raise answer
            slot = worker.slots[worker.sent.popleft()]
            task, slot.task = slot.task, None
            assert task is not None
            for (ticket, data, _), checked in zip(task, answer, strict=True):
                yield ticket, data, checked
