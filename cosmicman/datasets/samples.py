"""One dataset sample and how its parts are stored: the label-map PNG, the caption record, its size after
EXIF orientation, its content key, and the manifest row schema."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl
from PIL import Image
from polars.datatypes import DataTypeClass

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
    # the ATR label map at the image's (EXIF-oriented) size: uint8 HxW, or as stored (a core.masks.mask_png PNG,
    # its values checked when it was written), which goes into the shard as it is
    mask: np.ndarray | bytes
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


def content_keys(parts: pl.DataFrame) -> pl.Series:
    """:func:`content_key` of every row of ``parts`` (its columns in order), joined in Polars: strings as they
    are, integers and booleans as JSON writes them, null as ``null``, any other type through ``json.dumps``."""

    def as_text(column: pl.Series) -> pl.Series:
        if column.dtype == pl.String:
            return column
        if column.dtype.is_integer() or column.dtype == pl.Boolean:
            return column.cast(pl.String)
        dumps = partial(json.dumps, sort_keys=True, default=str)
        return pl.Series(column.name, [dumps(v) for v in column.to_list()], dtype=pl.String)

    texts = pl.DataFrame([as_text(column) for column in parts.get_columns()])
    joined = texts.select(pl.concat_str(pl.all().fill_null("null"), separator="\x1f")).to_series()
    sha = hashlib.sha256
    keys = [sha(text.encode()).hexdigest()[:CONTENT_KEY_HEX] for text in joined]
    return pl.Series("content_key", keys, dtype=pl.String)


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
    """Manifest rows as a frame (a field a row lacks: null), built column by column, several times faster than
    from dicts."""
    return pl.DataFrame({name: [r.get(name) for r in rows] for name in MANIFEST_SCHEMA}, schema=MANIFEST_SCHEMA)
