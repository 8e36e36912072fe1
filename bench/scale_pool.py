"""A synthetic pool at scale for bench/scale.py: the five per-batch tables the flywheel writes for every
sourcing batch (filtered_images, raw_images, human_parsing, annotations, captions), with a blob a row.

Rows are real: annotations are the protocol's attributes and Daring captions made by the real caption code
(``TEMPLATES`` distinct ones, repeated), masks are ATR label-map PNGs the shard writer decodes and checks, and
every image is a distinct tiny PNG (4x4 pixels, its row number in a text chunk: distinct bytes, distinct sha256,
as cheap to make as a row). Only the image bytes are tiny; everything a version stores per sample is there.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl

from cosmicman.core.keys import blob_key, table_key
from cosmicman.core.masks import mask_png
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption, sample_attributes

SIDE = 4  # pixels a side of every image and mask
TEMPLATES = 64  # distinct (attributes, caption) rows and masks, repeated over the pool
PARSER = "atr-bench"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_HEAD = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0))
_PIXELS = b"".join(b"\x00" + bytes(range(y * 40, y * 40 + 3 * SIDE)) for y in range(SIDE))  # filter 0 a scanline
_PNG_TAIL = _chunk(b"IDAT", zlib.compress(_PIXELS)) + _chunk(b"IEND", b"")


def tiny_png(row: int) -> bytes:
    """A valid 4x4 RGB PNG whose bytes differ for every row (a tEXt chunk holds the row number)."""
    return _PNG_HEAD + _chunk(b"tEXt", b"row\x00" + str(row).encode()) + _PNG_TAIL


class SyntheticPool:
    """Writes batches of ``rows`` rows into ``store`` (a local folder), continuing the row numbers."""

    def __init__(self, store: Store, seed: int = 0) -> None:
        self.store, self.root = store, Path(store.url.removeprefix("file://"))
        rng = np.random.default_rng(seed)
        protocol, tokenizer = load_protocol(), load_clip_tokenizer()
        self.labels = []
        for _ in range(TEMPLATES):
            attributes = sample_attributes(protocol, rng, p_skip=0.1)
            caption = build_caption(attributes, protocol, tokenizer, rng)
            self.labels.append((json.dumps(attributes, sort_keys=True), json.dumps(caption.to_json(), sort_keys=True)))
        self.mask_keys = []
        for i in range(TEMPLATES):
            key = f"parsing/{PARSER}/mask-{i:03d}.png"
            store.write_bytes(key, mask_png(rng.integers(0, 18, (SIDE, SIDE)).astype(np.uint8)))
            self.mask_keys.append(key)
        self.rows = 0

    def add_batch(self, batch: str, rows: int) -> int:
        """Blobs and the five tables of one batch of ``rows`` kept images; the bytes of its blobs."""
        first, self.rows = self.rows, self.rows + rows
        shas, keys, n_bytes = [], [], 0
        for row in range(first, first + rows):
            data = tiny_png(row)
            sha = hashlib.sha256(data).hexdigest()
            key = blob_key(sha, "png")
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)  # what Store.put_blob writes, without its per-file exists() round trip
            shas.append(sha)
            keys.append(key)
            n_bytes += len(data)
        labels = [self.labels[row % TEMPLATES] for row in range(first, first + rows)]
        ids = [str(row) for row in range(first, first + rows)]
        write = self.store.write_table
        write(
            table_key("filtered_images", batch),
            pl.DataFrame({"sha256": shas, "blob_key": keys, "ext": "png", "batch": batch, "decision": "kept",
                          "filter_config": '{"bench": true}'}),
        )  # fmt: skip
        write(
            table_key("raw_images", batch),
            pl.DataFrame({"sha256": shas, "source": "bench", "source_id": ids, "licence": "CC-BY-4.0"}),
        )
        write(
            table_key("human_parsing", batch),
            pl.DataFrame({"sha256": shas, "parser_version": PARSER,
                          "mask_key": [self.mask_keys[row % TEMPLATES] for row in range(first, first + rows)]}),
        )  # fmt: skip
        write(
            table_key("annotations", batch),
            pl.DataFrame({"sha256": shas, "attributes": [a for a, _ in labels], "annotator_version": "bench-r1",
                          "annotator_round": 1, "label_rounds": "[1]", "human_answers": 0}),
        )  # fmt: skip
        write(table_key("captions", batch), pl.DataFrame({"sha256": shas, "groups": [g for _, g in labels]}))
        return n_bytes
