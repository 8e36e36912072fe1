"""Does a published version still match what it lists? Every shard ``shards.parquet`` and the manifest name
exists with its recorded size and sha256 and holds the manifest's samples (Dagster-free).

:func:`cosmicman.datasets.shards.verify_shards` finds the problems by re-reading every shard; this adds what
was verified, so a passing verdict says how much it covered.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cosmicman.datasets.layout import SHARDS, read_shards_table, store_fs, version_exists, version_path
from cosmicman.datasets.shards import verify_shards


@dataclass(frozen=True)
class VersionVerification:
    """What ``shards.parquet`` lists for a version (0 when it cannot be read) and every problem found."""

    version: str
    shards: int
    samples: int
    n_bytes: int
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_version(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> VersionVerification:
    """Re-read every shard of ``version`` against ``shards.parquet`` and the manifest."""
    problems = verify_shards(root, version, storage_options)
    fs, path = store_fs(root, storage_options)
    listed = version_exists(root, version, storage_options) and fs.exists(
        posixpath.join(version_path(path, version), SHARDS)
    )
    if not listed:
        return VersionVerification(version, 0, 0, 0, problems)
    shards = read_shards_table(root, version, storage_options)
    return VersionVerification(
        version, len(shards), int(shards["n_samples"].sum()), int(shards["n_bytes"].sum()), problems
    )
