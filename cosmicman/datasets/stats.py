"""A version's statistics (the paper's Table 1 columns) and its data card."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, cast

import polars as pl


def _num(x: Any, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


COUNTED = ("source", "source_batch", "filter_decision", "annotator_round", "parser_version", "licence")
SUMMED = ("width", "height", "n_attributes", "caption_words", "caption_tokens", "n_groups", "n_spans")
MEDIANS = ("width", "height", "n_attributes")
# the manifest columns the statistics read: a version's rows are streamed with these alone
STATS_BATCH_ROWS = 8192
STATS_COLUMNS = list(dict.fromkeys([*COUNTED, *SUMMED, *MEDIANS, "groups", "dropped_groups", "categories"]))


class _Tally:
    """Running totals over manifest pieces: sums, value counts, and the value counts a median is read from (a
    width, a height, a count of attributes: a few thousand distinct values at any pool size), so a version's
    statistics never hold its manifest."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: Counter = Counter()
        self.max_tokens: int | None = None
        self.values: dict[str, Counter] = {c: Counter() for c in COUNTED}
        self.groups: Counter = Counter()
        self.dropped: Counter = Counter()
        self.categories: Counter = Counter()
        self.for_median: dict[str, Counter] = {c: Counter() for c in MEDIANS}

    def add(self, piece: pl.DataFrame) -> None:
        if piece.is_empty():
            return
        self.n += piece.height
        for c in SUMMED:
            self.sums[c] += int(cast(int, piece[c].sum()))
        top = cast(int, piece["caption_tokens"].max())
        self.max_tokens = top if self.max_tokens is None else max(self.max_tokens, top)
        for c in COUNTED:
            self.values[c].update(dict(piece[c].value_counts().iter_rows()))
        for counter, col in (
            (self.groups, "groups"),
            (self.dropped, "dropped_groups"),
            (self.categories, "categories"),
        ):
            counter.update(dict(piece[col].explode().drop_nulls().value_counts().iter_rows()))
        for c in MEDIANS:
            self.for_median[c].update(dict(piece[c].drop_nulls().value_counts().iter_rows()))

    def mean(self, col: str) -> float | None:
        return _num(self.sums[col] / self.n) if self.n else None

    def median(self, col: str) -> float | None:
        """The median of the column's values as Polars gives it (the mean of the two middle ones for an even
        count), read from their counts."""
        found = self.for_median[col]
        n = sum(found.values())
        if not n:
            return None
        values = sorted(found)

        def kth(k: int) -> int:  # the k-th smallest value, from 0
            seen = 0
            for value in values:
                seen += found[value]
                if seen > k:
                    return value
            raise AssertionError("k is under the count")

        return _num((kth((n - 1) // 2) + kth(n // 2)) / 2)

    def counts(self, col: str) -> dict[str, int]:
        # sorted by value, a missing value last and named "null" (None does not sort)
        found = self.values[col]
        keys = sorted((k for k in found if k is not None), key=lambda k: (k,)) + ([None] if None in found else [])
        return {("null" if k is None else str(k)): int(found[k]) for k in keys}


def compute_stats(pieces: Iterable[pl.DataFrame], protocol, shards: pl.DataFrame | None = None) -> dict[str, Any]:
    """Table-1 style statistics of a version, from its manifest read in pieces."""
    t = _Tally()
    for piece in pieces:
        t.add(piece)
    n = t.n
    cats = [c.name for c in protocol.categories]
    cov = {c: int(t.categories.get(c, 0)) for c in cats}
    group_names = [g.name for g in protocol.groups]
    stats = {
        "n_images": n,
        "mean_width": t.mean("width"),
        "mean_height": t.mean("height"),
        "median_width": t.median("width"),
        "median_height": t.median("height"),
        "mean_resolution": f"{t.sums['height'] / n:.0f}x{t.sums['width'] / n:.0f}" if n else None,
        "resolution_note": "mean_resolution is height x width in pixels after EXIF orientation",
        "n_categories": len(cats),
        "n_categories_covered": sum(v > 0 for v in cov.values()),
        "n_attributes": t.sums["n_attributes"],
        "mean_attributes_per_image": t.mean("n_attributes"),
        "median_attributes_per_image": t.median("n_attributes"),
        "mean_caption_words": t.mean("caption_words"),
        "mean_caption_tokens": t.mean("caption_tokens"),
        "max_caption_tokens": t.max_tokens,
        "caption_tokens_note": "CLIP BPE tokens without BOS/EOS",
        "mean_groups_per_caption": t.mean("n_groups"),
        "span_coverage": _num(t.sums["n_spans"] / max(1, t.sums["n_groups"])) if n else None,
        "category_coverage": {c: {"count": v, "fraction": _num(v / n) if n else 0.0} for c, v in cov.items()},
        "group_frequency": {g: _num(t.groups.get(g, 0) / n) if n else 0.0 for g in group_names},
        "group_dropped_frequency": {g: _num(t.dropped.get(g, 0) / n) if n else 0.0 for g in group_names},
        "sources": t.counts("source"),
        "source_batches": t.counts("source_batch"),
        "filter_decisions": t.counts("filter_decision"),
        "annotator_rounds": t.counts("annotator_round"),
        "parser_versions": t.counts("parser_version"),
        "licences": t.counts("licence"),
        "annotations": {"text": True, "human_parsing": True, "attributes": True, "bbox": False, "keypoints": False},
    }
    if shards is not None:
        stats["n_shards"] = shards.height
        stats["n_bytes"] = int(shards["n_bytes"].sum()) if shards.height else 0
    return stats


def render_datacard(version: str, stats: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
    def table(d: Mapping[str, Any], head: tuple[str, str]) -> list[str]:
        lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in d.items()] or ["| (none) | |"]
        return lines

    sources_desc = extra.get("sources", {})
    src = {k: f"{v}" + (f" — {sources_desc[k]}" if k in sources_desc else "") for k, v in stats["sources"].items()}
    out = [
        f"# CosmicMan-HQ {version}",
        "",
        extra.get(
            "description",
            "A human-centric text-to-image dataset produced by the CosmicMan Prime "
            "data flywheel (Annotate Anyone): single-person images that passed the "
            "filters, ATR human-parsing maps, protocol attributes and grouped captions "
            "(Daring data discretization) with token spans for HOLA.",
        ),
        "",
        f"Created {stats.get('created_at')}. Immutable: a new dataset is a new version.",
        "",
        "## Contents",
        "",
        f"- images: {stats['n_images']} in {stats.get('n_shards', '?')} WebDataset shards "
        f"({stats.get('n_bytes', '?')} bytes)",
        f"- mean resolution (h x w): {stats['mean_resolution']}; median {stats['median_height']} x "
        f"{stats['median_width']}",
        f"- categories: {stats['n_categories_covered']} of {stats['n_categories']} answered at least once; "
        f"{stats['n_attributes']} attributes, {stats['mean_attributes_per_image']} per image",
        f"- captions: {stats['mean_caption_words']} words / {stats['mean_caption_tokens']} CLIP tokens on "
        f"average, {stats['mean_groups_per_caption']} groups; spans found for {stats['span_coverage']} of groups",
        "",
        "Each sample (`__key__` = image sha256): the original image (`jpg`/`png`/...), `mask.png` (ATR "
        "label map, grey PNG, 0 = background .. 17 = scarf), `json` (caption, groups with end-exclusive "
        "token spans in the padded 77-id CLIP prompt, dropped groups, attributes, provenance) and `txt` "
        "(the caption). `shards.parquet` lists the sha256 of every shard it references and "
        "`segments.parquet` the manifest segments (`../manifests/<sha256>.parquet`) holding their samples "
        "with shard and provenance (shards and segments are shared between versions); `removed.parquet` "
        "names the samples its shards hold that are not in it; `stats.json` the figures above.",
        "",
        "## Sources",
        "",
        *table(src, ("source", "images")),
        "",
        "## Filtering",
        "",
        *table(stats["filter_decisions"], ("decision", "images")),
        "",
    ]
    if extra.get("filters"):
        out += [
            "Filter configuration:",
            "",
            "```json",
            json.dumps(extra["filters"], indent=2, sort_keys=True, default=str),
            "```",
            "",
        ]
    out += [
        "## Annotation",
        "",
        *table(stats["annotator_rounds"], ("annotator round", "images")),
        "",
        *table(stats["parser_versions"], ("parser version", "images")),
        "",
        "## Licence",
        "",
        extra.get(
            "licence_note",
            "Images keep the licences of their sources (below); this dataset adds "
            "annotations only. Check each source's terms before redistribution.",
        ),
        "",
        *table(stats["licences"], ("licence", "images")),
        "",
    ]
    return "\n".join(out)
