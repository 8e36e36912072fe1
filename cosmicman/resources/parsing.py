from __future__ import annotations

import dagster as dg

from cosmicman.core.store import Store
from cosmicman.parsing.parsers import HumanParser, SegmentationModelParser, SyntheticTruthParser


class ParserResource(dg.ConfigurableResource):
    """Human parsing: the synthetic world's truth locally; a segmentation model id in production."""

    model_id: str | None = None
    device: str = "cpu"

    def parser(self, store: Store) -> HumanParser:
        if self.model_id:
            return SegmentationModelParser(self.model_id, self.device)
        return SyntheticTruthParser(store)
