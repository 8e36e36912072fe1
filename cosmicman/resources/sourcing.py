from __future__ import annotations

import dataclasses

import dagster as dg

from cosmicman.core.store import Store
from cosmicman.sourcing.api_client import WebApiClient
from cosmicman.sourcing.api_source import ApiSource
from cosmicman.sourcing.fetch import FetchConfig
from cosmicman.sourcing.flickr import FlickrClient
from cosmicman.sourcing.ingest import IngestConfig
from cosmicman.sourcing.pixabay import PixabayClient
from cosmicman.sourcing.rate_limit import UNSPLASH_DEMO_RATE_LIMIT, UNSPLASH_PRODUCTION_RATE_LIMIT
from cosmicman.sourcing.sources import FolderSource, ImageSource, ParquetSource
from cosmicman.sourcing.unsplash import UnsplashClient

# Flickr licence ids that allow reuse: CC BY, CC BY-SA, no known copyright restrictions, US Government
# Work, CC0, Public Domain Mark (flickr.photos.licenses.getInfo).
FLICKR_REUSABLE_LICENCES = [4, 5, 7, 8, 9, 10]


class SourcingResource(dg.ConfigurableResource):
    """The sources feeding the pool, each with its share of a batch, the pool's lower-bound threshold,
    and how items are fetched and checked. API keys come only through ``dg.EnvVar`` (never logged)."""

    pool_threshold: int = 96
    folder_url: str | None = None
    folder_layout: str = "plain"
    folder_licence: str = "see dataset licence"
    folder_batch_size: int = 8
    parquet_url: str | None = None
    parquet_batch_size: int = 10_000
    api_terms: list[str] = [
        "full body photo of a person",
        "person standing full length",
        "fashion model full body",
        "street style outfit",
    ]
    flickr_api_key: str | None = None
    flickr_batch_size: int = 0
    flickr_licences: list[int] = FLICKR_REUSABLE_LICENCES
    flickr_base_url: str | None = None
    unsplash_access_key: str | None = None
    unsplash_batch_size: int = 0
    unsplash_production: bool = False
    unsplash_base_url: str | None = None
    pixabay_api_key: str | None = None
    pixabay_batch_size: int = 0
    pixabay_base_url: str | None = None
    workers: int | None = None
    chunk_size: int = 512
    near_dup_distance: int | None = 4
    max_url_attempts: int = 3
    resize_to: int | None = None
    max_in_flight: int = 64
    per_host: int = 16
    read_timeout_s: float = 30.0
    retries: int = 3

    def sources(self, store: Store | None = None) -> list[tuple[ImageSource, int]]:
        """Each source with the number of items it contributes per batch."""
        out = self.configured_sources()
        if not out:
            raise ValueError(
                "SourcingResource has no source: set folder_url, parquet_url or a web API key "
                "(flickr_api_key, unsplash_access_key, pixabay_api_key) with its batch size"
            )
        return out

    def configured_sources(self) -> list[tuple[ImageSource, int]]:
        """The sources this resource's settings enable, in plan order (possibly none)."""
        out: list[tuple[ImageSource, int]] = []
        if self.folder_url:
            out.append(
                (
                    FolderSource(self.folder_url, layout=self.folder_layout, licence=self.folder_licence),
                    self.folder_batch_size,
                )
            )
        if self.parquet_url:
            out.append((ParquetSource(self.parquet_url), self.parquet_batch_size))
        out += [(ApiSource(client, self.api_terms), size) for client, size in self._api_clients()]
        return out

    def _api_clients(self) -> list[tuple[WebApiClient, int]]:
        """A client for each web API with a key and a share of the batch (keys arrive via ``dg.EnvVar``)."""
        clients: list[tuple[WebApiClient, int]] = []
        if self.flickr_api_key and self.flickr_batch_size > 0:
            clients.append(
                (
                    FlickrClient(self.flickr_api_key, base_url=self.flickr_base_url, licences=self.flickr_licences),
                    self.flickr_batch_size,
                )
            )
        if self.unsplash_access_key and self.unsplash_batch_size > 0:
            limit = UNSPLASH_PRODUCTION_RATE_LIMIT if self.unsplash_production else UNSPLASH_DEMO_RATE_LIMIT
            clients.append(
                (
                    UnsplashClient(self.unsplash_access_key, base_url=self.unsplash_base_url, rate_limit=limit),
                    self.unsplash_batch_size,
                )
            )
        if self.pixabay_api_key and self.pixabay_batch_size > 0:
            clients.append(
                (PixabayClient(self.pixabay_api_key, base_url=self.pixabay_base_url), self.pixabay_batch_size)
            )
        return clients

    def ingest_config(self) -> IngestConfig:
        fetch = dataclasses.replace(
            FetchConfig(),
            max_in_flight=self.max_in_flight,
            per_host=self.per_host,
            read_timeout_s=self.read_timeout_s,
            retries=self.retries,
        )
        return IngestConfig(
            chunk_size=self.chunk_size,
            workers=self.workers,
            resize_to=self.resize_to,
            near_dup_distance=self.near_dup_distance,
            max_url_attempts=self.max_url_attempts,
            fetch=fetch,
        )
