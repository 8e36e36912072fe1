"""The real-image side of an evaluation, scored once per I_e and scorer settings, not once per model.

Every model of an ablation (variants x seeds, and the untuned base) is compared against the same real I_e
images with the same judge and scorers: their ceiling (semantic accuracy, CLIPScore, HPSv2 of the real
images against their own attributes and captions) and their features (the FID / KID reference) are the
same for all of them. They are written once under ``evaluation/references/<digest>.npz``, the digest naming
everything they are a function of: the real images' pixels, attributes and captions, the judge, the feature
extractor, the CLIP and HPSv2 models, the device and the prompt set version the ceiling is tagged with.
A changed I_e or scorer gives another digest, so a stale reference is never read.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cosmicman.core.keys import evaluation_reference_key
from cosmicman.core.store import Store

REFERENCE_FORMAT = 1  # bump when what a reference holds, or how it is computed, changes

RealItem = tuple[Image.Image, dict[str, str], str]  # image, its attributes, its caption


@dataclass(frozen=True)
class ReferenceSide:
    ceiling: dict[str, float]
    features: np.ndarray  # (n_real, d) reference features for the Frechet distance and KID


def reference_digest(settings: dict[str, Any], real: Sequence[RealItem]) -> str:
    """What the real side is a function of: ``settings`` (judge, scorers, device, prompt set version) and
    every real image's pixels, attributes and caption, in order."""
    h = hashlib.sha256(json.dumps({"format": REFERENCE_FORMAT, **settings}, sort_keys=True, default=str).encode())
    for image, attributes, caption in real:
        rgb = image.convert("RGB")
        h.update(f"{rgb.size}".encode())
        h.update(rgb.tobytes())
        h.update(json.dumps([attributes, caption], sort_keys=True).encode())
    return h.hexdigest()[:20]


def reference_side(
    store: Store,
    settings: dict[str, Any],
    real: Sequence[RealItem],
    compute: Callable[[], ReferenceSide],
    log_fn: Callable[[str], None],
) -> ReferenceSide:
    """The stored reference of ``real`` under ``settings``, or ``compute()``'s, then stored (one object,
    written whole: a crash leaves no half reference)."""
    key = evaluation_reference_key(reference_digest(settings, real))
    if store.exists(key):
        with np.load(io.BytesIO(store.read_bytes(key))) as stored:
            log_fn(f"real-image ceiling and features of {len(real)} I_e images: reusing {key}")
            return ReferenceSide(ceiling=json.loads(str(stored["ceiling"])), features=stored["features"])
    side = compute()
    buffer = io.BytesIO()
    np.savez(buffer, ceiling=np.array(json.dumps(side.ceiling)), features=side.features)
    store.write_bytes(key, buffer.getvalue())
    log_fn(f"real-image ceiling and features of {len(real)} I_e images scored and kept as {key}")
    return side
