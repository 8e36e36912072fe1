"""The file inbox whose human is the simulated oracle: it answers every task at submission, from the
synthetic pool's ground truth (the labelling backend of the local environment)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cosmicman.annotation.accuracy import full_manual_label_count
from cosmicman.annotation.items import LabelSource
from cosmicman.annotation.labelling import FileInbox, LabelTask, jsonl_bytes
from cosmicman.core.store import Store
from cosmicman.simulation.oracle import SimulatedOracle


class SimulatedOracleInbox(FileInbox):
    """The file inbox with a simulated human who answers every task at submission, from ground truth."""

    source: LabelSource = "oracle"

    def __init__(self, store: Store, truth: Mapping[str, Mapping[str, str]], oracle: SimulatedOracle) -> None:
        super().__init__(store)
        self.truth = truth
        self.oracle = oracle

    def can_label(self, sha256: str) -> bool:
        return sha256 in self.truth

    def applicable_category_count(self, shas: Sequence[str]) -> int:
        """Exact where the truth is known (the hierarchy says which questions apply)."""
        return full_manual_label_count([self.truth.get(s) for s in shas], self.oracle.protocol)

    def submit(self, round_id: str, round_number: int, tasks: Sequence[LabelTask]) -> None:
        missing = [t.image_sha256 for t in tasks if t.image_sha256 not in self.truth]
        if missing:
            raise ValueError(f"the simulated oracle has no ground truth for {len(missing)} images, e.g. {missing[0]}")
        super().submit(round_id, round_number, tasks)
        rows = []
        for t in tasks:
            attrs = self.truth[t.image_sha256]
            answers = {
                c: a
                for c in t.categories
                if (a := self.oracle.answer(t.image_sha256, attrs, c, round_number)) is not None
            }
            rows.append(
                {
                    "task_id": t.task_id,
                    "image_sha256": t.image_sha256,
                    "answers": answers,
                    "annotator": "simulated-oracle",
                }
            )
        self.store.write_bytes(self._key(round_id, "answers/oracle.jsonl"), jsonl_bytes(rows))
