"""What changed between two dataset versions, sample by sample, from their manifests streamed in pieces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from cosmicman.datasets.layout import iter_manifest
from cosmicman.datasets.reuse_plan import KEY_DIGITS, key_buckets, sorted_keys

#: manifest columns whose change makes a kept sample "relabelled" (its labels, caption or their makers)
KEYS_BATCH_ROWS = 8192  # manifest rows a piece while reducing a version to keys: the label columns are most of it
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


def _labels(root: str, version: str, storage_options: Mapping[str, Any] | None, sample: pl.Expr) -> pl.DataFrame:
    """(sample id, digest of its label columns) of every sample of ``version``. The digest is Polars' hash:
    stable within this process, which is all a comparison of two versions needs."""
    pieces = [
        b.select(sample.alias("id"), pl.struct(LABEL_COLUMNS).hash(7).alias("labels"))
        for b in iter_manifest(root, version, storage_options, ["sha256", *LABEL_COLUMNS], KEYS_BATCH_ROWS)
    ]
    return pl.concat(pieces) if pieces else pl.DataFrame(schema={"id": pl.String, "labels": pl.UInt64})


def diff_versions(root: str, old: str, new: str, storage_options: Mapping[str, Any] | None = None) -> VersionDiff:
    """What changed from version ``old`` to ``new``, sample by sample (keyed by image sha256)."""
    a = _labels(root, old, storage_options, pl.col("sha256"))
    b = _labels(root, new, storage_options, pl.col("sha256"))
    added = b.join(a, on="id", how="anti")["id"].sort().to_list()
    removed = a.join(b, on="id", how="anti")["id"].sort().to_list()
    both = a.join(b, on="id", how="inner", suffix="_new")
    relabelled = both.filter(pl.col("labels") != pl.col("labels_new"))["id"].sort().to_list()
    return VersionDiff(old, new, tuple(added), tuple(removed), tuple(relabelled), both.height - len(relabelled))


def diff_counts(root: str, old: str, new: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:meth:`VersionDiff.counts` of the two versions, joined on 16 bytes a sample (a 60-bit integer of the
    image sha256 and the label digest) instead of the sha256 strings, one bucket of samples at a time."""
    sample = pl.col("sha256").str.slice(0, KEY_DIGITS).str.to_integer(base=16)
    a = sorted_keys(_labels(root, old, storage_options, sample), on="id")
    b = sorted_keys(_labels(root, new, storage_options, sample), on="id")
    in_both = relabelled = 0
    for a_part, b_part in key_buckets(a, b, on="id"):
        both = a_part.join(b_part, on="id", how="inner", suffix="_new")
        in_both += both.height
        relabelled += int((both["labels"] != both["labels_new"]).sum())
    return {
        "old": old,
        "new": new,
        "added": b.height - in_both,
        "removed": a.height - in_both,
        "relabelled": relabelled,
        "unchanged": in_both - relabelled,
    }
