"""The local environment's synthetic data: the production resources for sourcing, parsing, filters and
evaluation, each with the synthetic world plugged in where production reads real data."""

from __future__ import annotations

import tempfile
from typing import Any

import dagster as dg

from cosmicman.core.store import Store
from cosmicman.parsing.parsers import HumanParser
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.simulation.human_art import write_synthetic_humanart_folder
from cosmicman.simulation.parser import SyntheticTruthParser
from cosmicman.simulation.prompts import synthetic_test_attributes
from cosmicman.simulation.source import SyntheticSource
from cosmicman.sourcing.sources import ImageSource

# each web API: the SourcingResource field holding its key, and the variable the key is read from
WEB_API_KEYS = {
    "flickr": ("flickr_api_key", "FLICKR_API_KEY"),
    "unsplash": ("unsplash_access_key", "UNSPLASH_ACCESS_KEY"),
    "pixabay": ("pixabay_api_key", "PIXABAY_API_KEY"),
}


class SimulatedSourcingResource(SourcingResource):
    """Production sourcing plus the synthetic world (``batch_size`` renders a batch, first in the plan).
    The web APIs are optional here: each run that sources says which are off and the variable that turns
    each on."""

    batch_size: int = 48
    synthetic: bool = True
    synthetic_seed: int = 0
    negative_fraction: float = 0.3

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # said once per run that sources; a sensor's tick (no run) initializes the resource too, every few seconds
        if context.dagster_run is None or context.log is None:
            return
        off = [f"{api} ({var} not set)" for api, (field, var) in WEB_API_KEYS.items() if not getattr(self, field)]
        if off:
            context.log.info(f"web API sources off in this environment: {', '.join(off)}")

    def configured_sources(self) -> list[tuple[ImageSource, int]]:
        synthetic: list[tuple[ImageSource, int]] = []
        if self.synthetic:
            synthetic.append(
                (SyntheticSource(seed=self.synthetic_seed, negative_fraction=self.negative_fraction), self.batch_size)
            )
        return synthetic + super().configured_sources()


class SimulatedParserResource(ParserResource):
    """The synthetic world's exact label maps, unless a segmentation model is named."""

    def parser(self, store: Store) -> HumanParser:
        return super().parser(store) if self.model_id else SyntheticTruthParser(store)


class SimulatedFilterResource(FilterResource):
    """Without ``fake_head_train_url`` (local backend only), the fake-person head trains from a Human-Art
    stand-in: ``fake_head_train_size`` synthetic renders written into the object store once (see
    :mod:`cosmicman.simulation.human_art`), read through the same folder reader."""

    fake_head_train_size: int = 200
    fake_head_seed: int = 40_000

    def synthetic_humanart_folder(self, store: Store) -> str:
        return write_synthetic_humanart_folder(store, self.fake_head_seed, self.fake_head_train_size)

    def train_fake_person_head(self, store: Store | None = None) -> tuple[bytes, dict]:
        """Without a store the synthetic folder goes to a temporary directory and is rendered on every call."""
        if self.fake_head_train_url or self.backend == "production":
            return super().train_fake_person_head(store)
        embedder = self.embedder()
        if store is not None:
            return self._train_from(self.synthetic_humanart_folder(store), embedder, **store.storage_options)
        with tempfile.TemporaryDirectory(prefix="fake-head-") as tmp:
            return self._train_from(self.synthetic_humanart_folder(Store(tmp)), embedder)


class SimulatedEvaluationResource(EvaluationResource):
    """Test prompts drawn from held-out synthetic people (seed ``prompt_seed``), unless a prompts file is named;
    semantic accuracy judged by the synthetic world's region reader over a learned pixel parser
    (``cosmicman.simulation.pixel_parser``), which is not the flywheel's annotator."""

    judge: dict[str, Any] = {"kind": "python", "factory": "cosmicman.simulation.pixel_parser:local_judge"}

    def test_attributes(self) -> list[dict[str, str]]:
        if self.prompts_url:
            return super().test_attributes()
        return synthetic_test_attributes(self.prompt_seed, self.n_prompts or 16)
