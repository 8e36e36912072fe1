from __future__ import annotations

import dagster as dg

from cosmicman.core.store import Store
from cosmicman.parsing.parsers import HumanParser, SegmentationModelParser


class ParserResource(dg.ConfigurableResource):
    """Human parsing with a transformers segmentation checkpoint with ATR labels (``model_id``: a hub id
    or a local folder)."""

    model_id: str | None = None
    device: str = "cpu"

    def parser(self, store: Store) -> HumanParser:
        if not self.model_id:
            raise ValueError(
                "ParserResource.model_id is not set: name an ATR-labelled segmentation checkpoint "
                "(model hub id or local folder)"
            )
        return SegmentationModelParser(self.model_id, self.device)
