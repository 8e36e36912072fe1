"""Dagster Pipes messages through the object store: the trainer side (no Dagster, only dagster-pipes).

A multi-node TrainJob has no single pod whose logs carry the messages, and pod logs rotate; so the
orchestrator (``cosmicman.resources.pipes_object_store.ObjectStoreMessageReader``) hands the trainer a
URL prefix on the object store in the Pipes bootstrap params, rank 0 uploads numbered message chunks
``<prefix>/<index>.json`` there, and the orchestrator polls them -- the same protocol as dagster's S3 /
GCS / Azure pairs, over any fsspec URL (``s3://`` through s3fs with the pod's credentials from the
environment, ``file://`` on a shared volume, ...). When the params name no such URL the writer behaves as
dagster-pipes' default (a file or stdio), so the same trainer works under every launcher.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import fsspec
from dagster_pipes import (
    PipesBlobStoreMessageWriterChannel,
    PipesDefaultMessageWriter,
    PipesMessageWriterChannel,
    PipesParams,
)

from cosmicman.core.store import is_local

#: bootstrap-params key holding the message prefix URL (set by the orchestrator's reader)
MESSAGES_URL_KEY = "cosmicman_messages_url"


def chunk_url(prefix: str, index: int) -> str:
    return f"{prefix.rstrip('/')}/{index}.json"


class ObjectStoreMessageWriterChannel(PipesBlobStoreMessageWriterChannel):
    def __init__(self, prefix: str, *, interval: float) -> None:
        super().__init__(interval=interval)
        self.prefix = prefix
        self.fs, _ = fsspec.core.url_to_fs(prefix)

    def upload_messages_chunk(self, payload: IO, index: int) -> None:
        _, path = fsspec.core.url_to_fs(chunk_url(self.prefix, index))
        if is_local(self.fs):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, payload.read().encode())


class ObjectStoreMessageWriter(PipesDefaultMessageWriter):
    """Object-store chunks when the params carry ``MESSAGES_URL_KEY``, else the default channels."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval

    @contextmanager
    def open(self, params: PipesParams) -> Iterator[PipesMessageWriterChannel]:
        if MESSAGES_URL_KEY not in params:
            with super().open(params) as channel:
                yield channel
            return
        channel = ObjectStoreMessageWriterChannel(str(params[MESSAGES_URL_KEY]), interval=self.interval)
        with channel.buffered_upload_loop():
            yield channel
