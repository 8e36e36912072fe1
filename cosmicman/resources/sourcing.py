from __future__ import annotations

from typing import Optional

import dagster as dg

from cosmicman.data.sources import FolderSource, ImageSource, SyntheticSource


class SourcingResource(dg.ConfigurableResource):
    """The sources feeding the pool, the batch size, and the pool's lower-bound threshold."""

    batch_size: int = 48
    pool_threshold: int = 96
    synthetic: bool = True
    synthetic_seed: int = 0
    negative_fraction: float = 0.3
    folder_url: Optional[str] = None
    folder_batch_size: int = 8

    def sources(self) -> list[tuple[ImageSource, int]]:
        """Each source with the number of records it contributes per batch."""
        out: list[tuple[ImageSource, int]] = []
        if self.synthetic:
            out.append((SyntheticSource(seed=self.synthetic_seed, negative_fraction=self.negative_fraction),
                        self.batch_size))
        if self.folder_url:
            out.append((FolderSource(self.folder_url), self.folder_batch_size))
        if not out:
            raise ValueError("SourcingResource has no source: enable synthetic or set folder_url")
        return out
