"""Labelled image sets: the evaluation set I_e every annotator version is measured on, and a round-0
training set, read from a folder of images with a ``labels.jsonl`` (one line per image:
``{"image": "<path relative to the folder>", "attributes": {"gender": "woman", ...}}``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from cosmicman.annotation.items import AnnotationItem
from cosmicman.core.keys import table_key
from cosmicman.core.store import Store

LABELS_FILE = "labels.jsonl"
EVAL_SET_TABLE = table_key("eval_set")


@dataclass(frozen=True)
class LabelledImage:
    """An image with its true answers; ``mask_png`` its parsing mask where known."""

    name: str
    image_bytes: bytes
    attributes: Mapping[str, str] = field(hash=False)
    mask_png: bytes | None = None


def read_labelled_folder(url: str) -> list[LabelledImage]:
    """The labelled images of the folder at ``url`` (any fsspec URL), in ``labels.jsonl`` order."""
    folder = Store(url)
    if not folder.exists(LABELS_FILE):
        raise FileNotFoundError(
            f"{url} has no {LABELS_FILE}: one JSON line per image, "
            '{"image": "<relative path>", "attributes": {...}}'
        )
    rows = [json.loads(line) for line in folder.read_bytes(LABELS_FILE).decode().splitlines() if line.strip()]
    return [LabelledImage(r["image"], folder.read_bytes(r["image"]), dict(r["attributes"])) for r in rows]


def read_eval_items(store: Store) -> list[AnnotationItem]:
    """I_e as the eval_set asset stored it: images with their ground truth."""
    df = store.read_table(EVAL_SET_TABLE)
    return [
        AnnotationItem.from_bytes(store.read_bytes(k), json.loads(a))
        for k, a in df.select("blob_key", "attributes").iter_rows()
    ]
