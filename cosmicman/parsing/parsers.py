"""Human parsing: an image in, an 18-class ATR label map out (same size as the image).

Production parses with a transformers semantic-segmentation model with ATR labels (SegFormer class,
e.g. a checkpoint fine-tuned on ATR); the local environment plugs in the synthetic world's exact masks
(:mod:`cosmicman.simulation.parser`) through the same :class:`HumanParser` interface.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from cosmicman.core.protocol import load_protocol


class ParserUnavailableError(RuntimeError):
    """The parsing model cannot be loaded or cannot parse this image. The message is the reason, the same
    for every image it applies to (the image is named beside it), so reasons can be counted."""


def unparsed_by_reason(reasons: Mapping[str, str]) -> dict[str, int]:
    """``{sha256: reason}`` -> how many images each reason left unparsed, most frequent first."""
    return dict(sorted(Counter(reasons.values()).items(), key=lambda item: (-item[1], item[0])))


class HumanParser(Protocol):
    version: str

    def setup(self) -> None: ...

    def parse(self, sha256: str, image: Image.Image) -> np.ndarray: ...


@dataclass(frozen=True)
class _LoadedModel:
    processor: Any
    model: Any
    label_map: np.ndarray  # model class index -> ATR part index


class SegmentationModelParser:
    """A transformers semantic-segmentation checkpoint whose ``id2label`` names the 18 ATR parts."""

    def __init__(self, model_id: str, device: str = "cpu") -> None:
        self.model_id = model_id
        self.device = device
        self.version = f"hf:{model_id}"
        self._loaded: _LoadedModel | None = None

    def setup(self) -> None:
        self._load()

    def _load(self) -> _LoadedModel:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        try:
            processor = AutoImageProcessor.from_pretrained(self.model_id)
            model = AutoModelForSemanticSegmentation.from_pretrained(self.model_id).to(self.device).eval()
        except OSError as exc:
            raise ParserUnavailableError(
                f"cannot load the parsing model {self.model_id!r} ({exc}); it needs model-hub access or a "
                "local folder with an ATR-labelled SegFormer-class checkpoint"
            ) from exc
        parts = [p.lower() for p in load_protocol().parts]
        id2label = model.config.id2label
        mapping = np.zeros(len(id2label), dtype=np.uint8)
        for idx, name in id2label.items():
            key = name.lower().replace("_", "-")
            if key not in parts:
                raise ParserUnavailableError(f"{self.model_id!r} label {name!r} is not an ATR part {parts}")
            mapping[int(idx)] = parts.index(key)
        self._loaded = _LoadedModel(processor, model, mapping)
        return self._loaded

    def parse(self, sha256: str, image: Image.Image) -> np.ndarray:
        import torch

        loaded = self._loaded or self._load()
        inputs = loaded.processor(images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            logits = loaded.model(**inputs).logits
        up = torch.nn.functional.interpolate(
            logits, size=(image.height, image.width), mode="bilinear", align_corners=False
        )
        return loaded.label_map[up.argmax(1)[0].cpu().numpy()]
