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
                "no synthetic-world truth mask: the local parser knows only the images the synthetic source "
                "rendered; name an ATR segmentation checkpoint (ParserResource.model_id) to parse other images"
            )
        mask = read_mask(self.store.read_bytes(key))
        if mask.shape != (image.height, image.width):
            raise ParserUnavailableError("the synthetic-world truth mask does not match the image's size")
        return mask
