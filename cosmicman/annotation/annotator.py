"""The interface every AI annotator honours (the light probe, the production VLM with LoRA) and the loader
that opens any saved one."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.probe_annotator import ProbeAnnotator
from cosmicman.core.protocol import Protocol as LabelProtocol


@runtime_checkable
class Annotator(Protocol):
    """An AI annotator. Implementations are immutable: ``finetune`` returns a new version."""

    @property
    def version(self) -> str: ...

    def predict(
        self, images: Sequence[Image.Image | bytes], categories: Sequence[str] | None = None
    ) -> list[dict[str, str]]:
        """One dict per image: answers to those of ``categories`` (default: all) that apply per the
        *predicted* hierarchy (a hat colour only when the annotator itself says there is a hat)."""
        ...

    def finetune(
        self, labels: Sequence[LabelRecord], images: Mapping[str, Image.Image | bytes], round: int | None = None
    ) -> Annotator:
        """A new annotator trained on ``labels``; ``images`` maps each label's sha256 to its image;
        ``round`` is the labelling round it comes from (default: the parent's plus one)."""
        ...

    def save(self, path: str | Path | None = None) -> bytes:
        """Serialise (and write to ``path`` if given); returns the bytes."""
        ...


def load_annotator(src: str | Path | bytes, protocol: LabelProtocol | None = None) -> Annotator:
    """Load any saved annotator (dispatches on the ``kind`` recorded by ``save``). A VLM annotator loads
    onto the base model its record names (a local path or a staged hub id)."""
    data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        kind = json.loads(zf.read("meta.json")).get("kind")
    if kind == "vlm":
        from cosmicman.annotation.vlm_annotator import VLMAnnotator  # transformers + peft: heavy, only when needed

        return VLMAnnotator.load(data, protocol=protocol)
    return ProbeAnnotator.load(data, protocol=protocol)
