"""The per-sample random draws of the training data path: a horizontal flip of the image and its parsing
map together, and a fresh caption drawn from the sample's structured groups (adjective and group shuffle,
group dropout, the released extra drop of late groups), as the released CosmicMan loader does at every
``__getitem__``.

Each sample's draws come from its own generator, seeded by (run seed, stream position). The position
counts samples in the reader's endless shuffled stream (epoch e's samples come after epoch e-1's), so it
names the epoch and the sample; a resumed run re-reads the stream and skips the consumed positions, so it
draws exactly what the uninterrupted run drew, whichever thread or rank decodes the sample.

Draw order per sample: one uniform for the flip (always drawn, so the caption draws do not depend on
``flip_p``), then ``draw_caption``'s draws.

A flip mirrors the label map and swaps the protocol's Left-/Right- parts (a left shoe seen in a mirror is
a right shoe); the caption uses the source's mirrored words (a viewer's "left" position becomes "right").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from cosmicman.core.caption_draw import GROUP_DROPOUT, LATE_GROUP_FROM, Caption, CaptionSource, draw_caption
from cosmicman.core.protocol import load_protocol

DRAW_STREAM = 0x5EED_C0DE  # keeps these generators apart from any other seeded from the run seed


@cache
def mirrored_label_ids() -> np.ndarray:
    """Label id -> its mirror image's id: each Left-x part swaps with Right-x, every other part stays."""
    parts = load_protocol().parts
    table = np.arange(len(parts), dtype=np.uint8)
    index = {name: i for i, name in enumerate(parts)}
    for name, i in index.items():
        if name.startswith("Left-") and (j := index.get("Right-" + name[len("Left-") :])) is not None:
            table[i], table[j] = j, i
    return table


def mirror_label_map(labels: np.ndarray) -> np.ndarray:
    """The label map of the horizontally flipped image: mirrored columns, Left-/Right- parts swapped."""
    labels = np.asarray(labels)
    table = mirrored_label_ids()
    if labels.size and int(labels.max()) >= len(table):
        raise ValueError(f"label {int(labels.max())} outside the protocol's 0..{len(table) - 1}")
    return np.ascontiguousarray(table[labels[:, ::-1]])


@dataclass(frozen=True)
class SampleDraw:
    """What a training reader draws per sample (see module doc)."""

    seed: int
    flip_p: float = 0.5
    group_dropout: float = GROUP_DROPOUT
    late_group_dropout: float = 0.0
    late_group_from: int = LATE_GROUP_FROM

    def rng(self, pos: int) -> np.random.Generator:
        """The generator of the sample at stream position ``pos``."""
        if pos < 0:
            raise ValueError(f"stream position must be >= 0, got {pos}")
        return np.random.default_rng([DRAW_STREAM, self.seed % 2**63, pos])

    def flips(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.flip_p)

    def caption(self, source: Mapping[str, Any], tokenizer, rng: np.random.Generator, mirrored: bool) -> Caption:
        """A fresh caption from a sample's stored ``caption_source``."""
        return draw_caption(
            CaptionSource.from_json(source),
            tokenizer,
            rng,
            group_dropout=self.group_dropout,
            late_group_dropout=self.late_group_dropout,
            late_group_from=self.late_group_from,
            mirrored=mirrored,
        )
