"""A version's statistics (the paper's Table 1 columns) and its data card."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

import polars as pl


def _num(x: Any, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def compute_stats(
    manifest: pl.DataFrame, coverage: Mapping[str, int], protocol, shards: pl.DataFrame | None = None
) -> dict[str, Any]:
    """Table-1 style statistics of a version, from its manifest and per-category answer counts."""
    n = manifest.height
    cats = [c.name for c in protocol.categories]
    cov = {c: int(coverage.get(c, 0)) for c in cats}
    group_names = [g.name for g in protocol.groups]
    group_counts = Counter(g for gs in manifest["groups"].to_list() for g in gs) if n else Counter()
    dropped_counts = Counter(g for gs in manifest["dropped_groups"].to_list() for g in gs) if n else Counter()

    def counts(col: str) -> dict[str, int]:
        if not n:
            return {}
        vc = manifest.group_by(col).len().sort(col, nulls_last=True)
        return {("null" if k is None else str(k)): int(v) for k, v in zip(vc[col].to_list(), vc["len"].to_list())}

    def col_stat(col: str, fn: str) -> float | None:
        return _num(getattr(manifest[col], fn)()) if n else None

    stats = {
        "n_images": n,
        "mean_width": col_stat("width", "mean"),
        "mean_height": col_stat("height", "mean"),
        "median_width": col_stat("width", "median"),
        "median_height": col_stat("height", "median"),
        "mean_resolution": (
            f"{cast(float, manifest['height'].mean()):.0f}x{cast(float, manifest['width'].mean()):.0f}" if n else None
        ),
        "resolution_note": "mean_resolution is height x width in pixels after EXIF orientation",
        "n_categories": len(cats),
        "n_categories_covered": sum(v > 0 for v in cov.values()),
        "n_attributes": cast(int, manifest["n_attributes"].sum()) if n else 0,
        "mean_attributes_per_image": col_stat("n_attributes", "mean"),
        "median_attributes_per_image": col_stat("n_attributes", "median"),
        "mean_caption_words": col_stat("caption_words", "mean"),
        "mean_caption_tokens": col_stat("caption_tokens", "mean"),
        "max_caption_tokens": cast(int, manifest["caption_tokens"].max()) if n else None,
        "caption_tokens_note": "CLIP BPE tokens without BOS/EOS",
        "mean_groups_per_caption": col_stat("n_groups", "mean"),
        "span_coverage": (
            _num(cast(int, manifest["n_spans"].sum()) / max(1, cast(int, manifest["n_groups"].sum()))) if n else None
        ),
        "category_coverage": {c: {"count": v, "fraction": _num(v / n) if n else 0.0} for c, v in cov.items()},
        "group_frequency": {g: _num(group_counts.get(g, 0) / n) if n else 0.0 for g in group_names},
        "group_dropped_frequency": {g: _num(dropped_counts.get(g, 0) / n) if n else 0.0 for g in group_names},
        "sources": counts("source"),
        "source_batches": counts("source_batch"),
        "filter_decisions": counts("filter_decision"),
        "annotator_rounds": counts("annotator_round"),
        "parser_versions": counts("parser_version"),
        "licences": counts("licence"),
        "annotations": {"text": True, "human_parsing": True, "attributes": True, "bbox": False, "keypoints": False},
    }
    if shards is not None:
        stats["n_shards"] = shards.height
        stats["n_bytes"] = int(shards["n_bytes"].sum()) if shards.height else 0
    return stats


def render_datacard(version: str, stats: Mapping[str, Any], manifest: pl.DataFrame, extra: Mapping[str, Any]) -> str:
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
        "(the caption). `manifest.parquet` lists every sample with its shard and provenance, "
        "`shards.parquet` the sha256 of every shard, `stats.json` the figures above.",
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
