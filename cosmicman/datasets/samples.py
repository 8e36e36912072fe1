"""One dataset sample and how its parts are stored: the label-map PNG, the caption record, its size after
EXIF orientation, its content key, and the manifest row schema."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from PIL import Image
from polars.datatypes import DataTypeClass

N_ATR_LABELS = 18


PROVENANCE_COLUMNS: dict[str, DataTypeClass] = {
    "source": pl.String,
    "source_id": pl.String,
    "source_batch": pl.String,
    "licence": pl.String,
    "filter_decision": pl.String,
    "parser_version": pl.String,
    "annotator_round": pl.Int64,
}


@dataclass
class DatasetSample:
    sha256: str
    image_bytes: bytes
    ext: str
    mask: np.ndarray  # uint8 HxW ATR label map at the image's (EXIF-oriented) size
    attributes: dict[str, str]
    caption: Any  # a captions.Caption or its to_json() dict {"caption", "groups", "dropped", ...}
    provenance: dict[str, Any] = field(default_factory=dict)  # source, source_batch, filter_decision, ...


def oriented_size(image_bytes: bytes) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF: keep the stored size
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def encode_mask_png(mask: np.ndarray) -> bytes:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_ATR_LABELS):
        raise ValueError(f"label map values must be in 0..{N_ATR_LABELS - 1}")
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"label map PNG has mode {img.mode}, expected L")
        return np.array(img, dtype=np.uint8)


def caption_record(caption: Any) -> dict[str, Any]:
    d = caption.to_json() if hasattr(caption, "to_json") else dict(caption)
    if "caption" not in d and "text" in d:
        d = {**d, "caption": d["text"]}
        d.pop("text")
    d.setdefault("groups", [])
    d.setdefault("dropped", [])
    return d


CONTENT_KEY_HEX = 32  # 128 bits: two different samples never share a key in any pool this size


def content_key(*parts: object) -> str:
    """A sample's content key: a digest of everything its shard members are made of. The same key in an
    earlier version's manifest means its shard already holds those exact bytes."""
    text = "\x1f".join(p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:CONTENT_KEY_HEX]


def sample_content_key(sample: DatasetSample, mask_png: bytes) -> str:
    """The content key of a sample given whole (image bytes in hand): image, mask, labels and provenance."""
    return content_key(
        sample.sha256.lower(),
        sample.ext.lower(),
        hashlib.sha256(mask_png).hexdigest(),
        dict(sample.attributes),
        caption_record(sample.caption),
        dict(sample.provenance),
    )


MANIFEST_SCHEMA: dict[str, DataTypeClass | pl.DataType] = {
    "sha256": pl.String,
    "shard": pl.String,
    "shard_sha256": pl.String,
    "ext": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    **PROVENANCE_COLUMNS,
    "provenance_json": pl.String,
    "caption": pl.String,
    "n_groups": pl.Int64,
    "n_spans": pl.Int64,
    "groups": pl.List(pl.String),
    "dropped_groups": pl.List(pl.String),
    "n_attributes": pl.Int64,
    "caption_words": pl.Int64,
    "caption_tokens": pl.Int64,
    "categories": pl.List(pl.String),  # the protocol categories the sample's attributes answer
    "content_key": pl.String,
}


def manifest_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA) if rows else pl.DataFrame(schema=MANIFEST_SCHEMA)
