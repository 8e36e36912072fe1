"""Ground truth of synthetic samples, stored beside (never inside) the pool.

Filters and annotators only see pixels; the truth serves the simulated oracle, the evaluation set,
the synthetic parsing backend and the tests.
"""
from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
from PIL import Image

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.store import Store
from cosmicman.simulation.world import SyntheticSample

TRUTH_SCHEMA = {"sha256": pl.Utf8, "sample_id": pl.Utf8, "case": pl.Utf8, "attributes": pl.Utf8,
                "n_people": pl.Int32, "bbox": pl.List(pl.Int32), "face_bbox": pl.List(pl.Int32),
                "mask_key": pl.Utf8}


def mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def read_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8)


def truth_mask_key(sha256: str) -> str:
    return f"truth/masks/{sha256[:2]}/{sha256}.png"


def store_truth(samples: list[SyntheticSample], store: Store) -> pl.DataFrame:
    rows = []
    for s in samples:
        sha = sha256_hex(s.image_bytes)
        key = None
        if s.mask is not None:
            key = truth_mask_key(sha)
            if not store.exists(key):
                store.write_bytes(key, mask_png(s.mask))
        rows.append({"sha256": sha, "sample_id": s.sample_id, "case": s.case,
                     "attributes": json.dumps(s.attributes, sort_keys=True) if s.attributes else None,
                     "n_people": s.n_people, "bbox": list(s.bbox) if s.bbox else None,
                     "face_bbox": list(s.face_bbox) if s.face_bbox else None, "mask_key": key})
    return pl.DataFrame(rows, schema=TRUTH_SCHEMA)
