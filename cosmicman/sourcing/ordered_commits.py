"""Outcome rows committed in decision order, each once its blob is written.

Blob writes run on a few threads: a PUT to an object store is mostly waiting, and one at a time would hold a
batch to one round trip per image. Decisions stay on the caller's thread, in order: the duplicate index learns
of an image when it is decided, before its blob lands. So a row is committed (handed to the chunk writer) only
when every row decided before it is committed, and its own blob, if any, is written: a near-duplicate decided
while its original's blob was still in flight is never on disk without that original's row, and a kill loses
only rows whose blobs, content-addressed, are found again on the re-run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cosmicman.core.store import PutResult, Store


class OrderedCommits:
    """Rows in decision order; ``commit`` gets each one when it and every row before it are done."""

    def __init__(self, store: Store, threads: int, commit: Callable[[dict], None], max_pending: int = 256) -> None:
        self.store, self.commit, self.max_pending = store, commit, max_pending
        self.writes = ThreadPoolExecutor(threads, thread_name_prefix="cosmicman-blob") if threads > 0 else None
        self.pending: deque[tuple[dict, Future[PutResult] | None]] = deque()
        self.created = 0  # blobs this batch created (a blob already in the store is not created again)

    def add(self, row: dict, blob: tuple[bytes, str, str] | None = None) -> None:
        """Decide ``row``; ``blob`` (bytes, extension, sha256) is written first and its key set in the row."""
        if blob is None:
            self.pending.append((row, None))
        elif self.writes is None:
            self.pending.append((row, _done(self.store.put_blob(blob[0], blob[1], sha256=blob[2]))))
        else:
            self.pending.append((row, self.writes.submit(self.store.put_blob, blob[0], blob[1], sha256=blob[2])))
        self._commit_ready(block=len(self.pending) > self.max_pending)

    def drain(self) -> None:
        """Commit every row still pending (waiting for its blob)."""
        while self.pending:
            self._commit_ready(block=True)

    def close(self) -> None:
        if self.writes is not None:
            self.writes.shutdown(wait=True, cancel_futures=True)

    def _commit_ready(self, block: bool) -> None:
        while self.pending:
            row, write = self.pending[0]
            if write is not None and not write.done() and not block:
                return
            block = False  # waited for the head once: the rest only as far as they are ready
            self.pending.popleft()
            if write is not None:
                put = write.result()  # a failed write raises here, before its row is committed
                self.created += put.created
                row["blob_key"] = put.key
            self.commit(row)


def _done(result: PutResult) -> Future[PutResult]:
    future: Future[PutResult] = Future()
    future.set_result(result)
    return future
