"""Human parsing backends: an image in, an 18-class ATR label map out (same size as the image).

The synthetic world's exact masks pass through for synthetic images; real images go through a
transformers semantic-segmentation model with ATR labels (SegFormer class, e.g. a checkpoint
fine-tuned on ATR) in production.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.simulation.truth import read_mask, truth_mask_key


class ParserUnavailableError(RuntimeError):
    """The parsing model cannot be loaded or cannot parse this image."""


class HumanParser(Protocol):
    version: str

    def setup(self) -> None: ...

    def parse(self, sha256: str, image: Image.Image) -> np.ndarray: ...


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
                "configure a segmentation model (parser.model_id) for real images")
        mask = read_mask(self.store.read_bytes(key))
        if mask.shape != (image.height, image.width):
            raise ParserUnavailableError(f"truth mask {mask.shape} does not match image {image.size[::-1]}")
        return mask


class SegmentationModelParser:
    """A transformers semantic-segmentation checkpoint whose ``id2label`` names the 18 ATR parts."""

    def __init__(self, model_id: str, device: str = "cpu") -> None:
        self.model_id = model_id
        self.device = device
        self.version = f"hf:{model_id}"
        self._model = None
        self._processor = None
        self._label_map: np.ndarray | None = None

    def setup(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        try:
            self._processor = AutoImageProcessor.from_pretrained(self.model_id)
            self._model = AutoModelForSemanticSegmentation.from_pretrained(self.model_id).to(self.device).eval()
        except OSError as exc:
            raise ParserUnavailableError(
                f"cannot load the parsing model {self.model_id!r} ({exc}); it needs model-hub access or a "
                "local folder with an ATR-labelled SegFormer-class checkpoint") from exc
        parts = [p.lower() for p in load_protocol().parts]
        id2label = self._model.config.id2label
        mapping = np.zeros(len(id2label), dtype=np.uint8)
        for idx, name in id2label.items():
            key = name.lower().replace("_", "-")
            if key not in parts:
                raise ParserUnavailableError(f"{self.model_id!r} label {name!r} is not an ATR part {parts}")
            mapping[int(idx)] = parts.index(key)
        self._label_map = mapping

    def parse(self, sha256: str, image: Image.Image) -> np.ndarray:
        import torch

        if self._model is None:
            self.setup()
        inputs = self._processor(images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            logits = self._model(**inputs).logits
        up = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear",
                                             align_corners=False)
        return self._label_map[up.argmax(1)[0].cpu().numpy()]
