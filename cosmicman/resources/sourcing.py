from __future__ import annotations

import dataclasses
from typing import Optional

import dagster as dg

from cosmicman.data.fetch import FetchConfig
from cosmicman.data.ingest import IngestConfig
from cosmicman.data.sources import FolderSource, ImageSource, ParquetSource, SyntheticSource
from cosmicman.data.store import Store


class SourcingResource(dg.ConfigurableResource):
    """The sources feeding the pool, each with its share of a batch, the pool's lower-bound threshold,
    and how items are fetched and checked. API keys come only through ``dg.EnvVar`` (never logged)."""

    batch_size: int = 48
    pool_threshold: int = 96
    synthetic: bool = True
    synthetic_seed: int = 0
    negative_fraction: float = 0.3
    folder_url: Optional[str] = None
    folder_layout: str = "plain"
    folder_licence: str = "see dataset licence"
    folder_batch_size: int = 8
    parquet_url: Optional[str] = None
    parquet_batch_size: int = 10_000
    workers: Optional[int] = None
    chunk_size: int = 512
    near_dup_distance: Optional[int] = 4
    max_url_attempts: int = 3
    resize_to: Optional[int] = None
    max_in_flight: int = 64
    per_host: int = 16
    read_timeout_s: float = 30.0
    retries: int = 3

    def sources(self, store: Store | None = None) -> list[tuple[ImageSource, int]]:
        """Each source with the number of items it contributes per batch."""
        out: list[tuple[ImageSource, int]] = []
        if self.synthetic:
            out.append((SyntheticSource(seed=self.synthetic_seed, negative_fraction=self.negative_fraction),
                        self.batch_size))
        if self.folder_url:
            out.append((FolderSource(self.folder_url, layout=self.folder_layout, licence=self.folder_licence),
                        self.folder_batch_size))
        if self.parquet_url:
            out.append((ParquetSource(self.parquet_url), self.parquet_batch_size))
        if not out:
            raise ValueError("SourcingResource has no source: enable synthetic or set folder_url / parquet_url")
        return out

    def ingest_config(self) -> IngestConfig:
        fetch = dataclasses.replace(FetchConfig(), max_in_flight=self.max_in_flight, per_host=self.per_host,
                                    read_timeout_s=self.read_timeout_s, retries=self.retries)
        return IngestConfig(chunk_size=self.chunk_size, workers=self.workers, resize_to=self.resize_to,
                            near_dup_distance=self.near_dup_distance, max_url_attempts=self.max_url_attempts,
                            fetch=fetch)
