"""What changed between two dataset versions, sample by sample."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from cosmicman.datasets.layout import read_manifest

#: manifest columns whose change makes a kept sample "relabelled" (its labels, caption or their makers)
LABEL_COLUMNS = ("caption", "groups", "dropped_groups", "n_attributes", "parser_version", "annotator_round")


@dataclass(frozen=True)
class VersionDiff:
    old: str
    new: str
    added: tuple[str, ...]  # sha256 only in ``new``
    removed: tuple[str, ...]  # sha256 only in ``old``
    relabelled: tuple[str, ...]  # in both, with a different caption / groups / parser / annotator round
    unchanged: int

    def counts(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "added": len(self.added),
            "removed": len(self.removed),
            "relabelled": len(self.relabelled),
            "unchanged": self.unchanged,
        }


def diff_versions(root: str, old: str, new: str, storage_options: Mapping[str, Any] | None = None) -> VersionDiff:
    """What changed from version ``old`` to ``new``, sample by sample (keyed by image sha256)."""
    cols = ["sha256", *LABEL_COLUMNS]
    a = read_manifest(root, old, storage_options).select(cols)
    b = read_manifest(root, new, storage_options).select(cols)
    added = b.join(a, on="sha256", how="anti")["sha256"].sort().to_list()
    removed = a.join(b, on="sha256", how="anti")["sha256"].sort().to_list()
    both = a.join(b, on="sha256", how="inner", suffix="_new")
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_new")) for c in LABEL_COLUMNS])
    relabelled = both.filter(changed)["sha256"].sort().to_list()
    return VersionDiff(old, new, tuple(added), tuple(removed), tuple(relabelled), both.height - len(relabelled))
