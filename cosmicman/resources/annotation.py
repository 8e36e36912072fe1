from __future__ import annotations

import json

import dagster as dg

from cosmicman.data.annotation import SimulatedOracle
from cosmicman.data.labelling import FileInbox, LabellingBackend, SimulatedOracleInbox
from cosmicman.data.store import Store


def synthetic_truth(store: Store) -> dict[str, dict[str, str]]:
    """sha256 -> ground-truth attributes of every synthetic pool image that shows one person."""
    truth: dict[str, dict[str, str]] = {}
    for _, df in store.iter_tables("tables/synthetic_truth"):
        for sha, attrs in df.select("sha256", "attributes").iter_rows():
            if attrs:
                truth[sha] = json.loads(attrs)
    return truth


class AnnotatorResource(dg.ConfigurableResource):
    """The AI annotator of Annotate Anyone and its round settings (paper: 85 % threshold)."""

    kind: str = "probe"
    threshold: float = 0.85
    round_sample_size: int = 32
    eval_size: int = 60
    eval_seed: int = 10_000
    pretrain_size: int = 120
    pretrain_seed: int = 20_000
    round_seed: int = 0

    def check_kind(self) -> None:
        if self.kind != "probe":
            raise ValueError(f"annotator kind {self.kind!r} is not available yet; the embedded default is 'probe'")


class LabellingResource(dg.ConfigurableResource):
    """Where questions go to humans: ``oracle`` (simulated human from synthetic truth) or ``inbox``
    (JSON-lines files under the object store, answered by people or another tool)."""

    backend_kind: str = "oracle"
    oracle_error_rate: float = 0.05
    oracle_seed: int = 0

    def backend(self, store: Store) -> LabellingBackend:
        if self.backend_kind == "inbox":
            return FileInbox(store)
        if self.backend_kind == "oracle":
            return SimulatedOracleInbox(store, synthetic_truth(store),
                                        SimulatedOracle(self.oracle_error_rate, self.oracle_seed))
        raise ValueError(f"unknown labelling backend {self.backend_kind!r}; use 'oracle' or 'inbox'")
