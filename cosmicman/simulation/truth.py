"""Ground truth of synthetic samples, stored beside (never inside) the pool.

Filters and annotators only see pixels; the truth serves the simulated oracle, the evaluation set,
the synthetic parsing backend and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import polars as pl

from cosmicman.core.keys import synthetic_truth_key, truth_mask_key
from cosmicman.core.masks import mask_png
from cosmicman.core.store import Store
from cosmicman.simulation.world import SyntheticSample

TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "sha256": pl.Utf8(),
    "sample_id": pl.Utf8(),
    "case": pl.Utf8(),
    "attributes": pl.Utf8(),
    "n_people": pl.Int32(),
    "bbox": pl.List(pl.Int32),
    "face_bbox": pl.List(pl.Int32),
    "mask_key": pl.Utf8(),
}


def store_truth(batch: str, samples: Sequence[tuple[SyntheticSample, str]], store: Store) -> pl.DataFrame:
    """The truth table of the samples a batch stored, each with the sha256 of its pool image, and their
    label maps (one PNG per image). Idempotent: masks already written stay, the table is rewritten whole."""
    rows = []
    for s, sha in samples:
        key = None
        if s.mask is not None:
            key = truth_mask_key(sha)
            if not store.exists(key):
                store.write_bytes(key, mask_png(s.mask))
        rows.append(
            {
                "sha256": sha,
                "sample_id": s.sample_id,
                "case": s.case,
                "attributes": json.dumps(s.attributes, sort_keys=True) if s.attributes else None,
                "n_people": s.n_people,
                "bbox": list(s.bbox) if s.bbox else None,
                "face_bbox": list(s.face_bbox) if s.face_bbox else None,
                "mask_key": key,
            }
        )
    table = pl.DataFrame(rows, schema=TRUTH_SCHEMA)
    if len(table):
        store.write_table(synthetic_truth_key(batch), table)
    return table
