"""The interface every filter backend implements, and the error a production backend raises.

Local backends run offline on CPU with weights shipped in pip wheels; production ones load real weights
in ``setup()`` and raise :class:`BackendUnavailable` naming what they need when weights or packages are
missing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cosmicman.filtering.boxes import Box


class BackendUnavailable(RuntimeError):
    """A production backend cannot load its model; the message says what it needs."""


@runtime_checkable
class PersonDetector(Protocol):
    name: str

    def setup(self) -> None: ...

    def detect(self, img: Image.Image) -> list[tuple[Box, float]]:
        """Person boxes (x0, y0, x1, y1) in image pixels with confidences, after NMS."""


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def setup(self) -> None: ...

    def detect(self, img: Image.Image) -> list[Box]: ...


@runtime_checkable
class Embedder(Protocol):
    name: str

    def setup(self) -> None: ...

    def embed(self, img: Image.Image) -> np.ndarray: ...


@runtime_checkable
class QualityScorer(Protocol):
    name: str

    def setup(self) -> None: ...

    def score(self, img: Image.Image) -> dict[str, float]:
        """Component scores plus ``quality`` in [0, 1]."""
