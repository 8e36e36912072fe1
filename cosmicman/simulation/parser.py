"""The synthetic world's parsing backend: the renderer's exact label maps, for synthetic images only."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cosmicman.core.keys import truth_mask_key
from cosmicman.core.masks import read_mask
from cosmicman.core.store import Store
from cosmicman.parsing.parsers import ParserUnavailableError


class SyntheticTruthParser:
    """Returns the renderer's exact label map; refuses images that are not from the synthetic world."""

    version = "synthetic-truth-1"

    def __init__(self, store: Store) -> None:
        self.store = store

    def setup(self) -> None:
        pass

    def parse(self, sha256: str, image: Image.Image) -> np.ndarray:
        key = truth_mask_key(sha256)
        if not self.store.exists(key):
            raise ParserUnavailableError(
                f"{sha256} is not a synthetic image, so the synthetic-truth parser has no mask for it; "
                "configure a segmentation model (parser.model_id) for real images"
            )
        mask = read_mask(self.store.read_bytes(key))
        if mask.shape != (image.height, image.width):
            raise ParserUnavailableError(f"truth mask {mask.shape} does not match image {image.size[::-1]}")
        return mask
