"""Dagster Pipes messages through the object store: the orchestrator side.

Pairs with ``cosmicman.model.pipes_channel.ObjectStoreMessageWriter`` (see its module doc): each Pipes
session gets a fresh prefix ``<url>/<uuid>``, which reaches the trainer in the bootstrap params; chunks
``<prefix>/<index>.json`` are read in order as they appear. The chunks stay after the run (a record of
what the trainer reported); a lifecycle rule on the prefix can expire them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import fsspec
from dagster._core.pipes.utils import PipesBlobStoreMessageReader

from cosmicman.model.pipes_channel import MESSAGES_URL_KEY, chunk_url


class ObjectStoreMessageReader(PipesBlobStoreMessageReader):
    """Reads the numbered message chunks a trainer uploads under ``url`` (any fsspec URL)."""

    def __init__(self, url: str, interval: float = 5.0) -> None:
        super().__init__(interval=interval)
        self.url = url.rstrip("/")

    @contextmanager
    def get_params(self) -> Iterator[Mapping[str, Any]]:
        yield {MESSAGES_URL_KEY: f"{self.url}/{uuid.uuid4().hex}"}

    def messages_are_readable(self, params: Mapping[str, Any]) -> bool:
        return True  # chunks appear one by one; a missing one is simply not there yet

    def download_messages_chunk(self, index: int, params: Mapping[str, Any]) -> str | None:
        fs, path = fsspec.core.url_to_fs(chunk_url(params[MESSAGES_URL_KEY], index))
        try:
            return fs.cat_file(path).decode()
        except FileNotFoundError:
            return None

    def no_messages_debug_text(self) -> str:
        return (
            f"Tried to read Pipes message chunks under {self.url}/<session>/. The trainer must open "
            "dagster-pipes with cosmicman.model.pipes_channel.ObjectStoreMessageWriter and reach that "
            "store (credentials / endpoint in its environment)."
        )
