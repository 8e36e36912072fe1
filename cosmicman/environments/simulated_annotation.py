"""The annotation stage on the synthetic world (the local environment): I_e and the round-0 pretraining
set rendered from it, the probe's round 0 trained on simulated generic-VLM labels, and the simulated
oracle as the labelling backend, answering from the synthetic pool's ground truth."""

from __future__ import annotations

from cosmicman.annotation.annotator import Annotator
from cosmicman.annotation.eval_set import LabelledImage
from cosmicman.annotation.labelling import LabellingBackend
from cosmicman.core.masks import mask_png
from cosmicman.core.store import Store
from cosmicman.resources.annotation import AnnotatorResource, LabellingResource
from cosmicman.simulation.oracle import SimulatedOracle
from cosmicman.simulation.oracle_inbox import SimulatedOracleInbox
from cosmicman.simulation.people import synthetic_samples, synthetic_truth
from cosmicman.simulation.pretraining import pretrained_probe


class SimulatedAnnotatorResource(AnnotatorResource):
    """I_e and the pretraining set are synthetic people; the probe's round 0 learns noisy, biased labels
    (a generic pretrained VLM's knowledge) of the pretraining set."""

    eval_size: int = 60
    eval_seed: int = 10_000
    pretrain_size: int = 120
    pretrain_seed: int = 20_000

    def eval_images(self) -> list[LabelledImage]:
        return [
            LabelledImage(
                s.sample_id, s.image_bytes, s.attributes or {}, mask_png(s.mask) if s.mask is not None else None
            )
            for s in synthetic_samples(self.eval_seed, self.eval_size)
        ]

    def pretrain_images(self) -> list[LabelledImage]:
        return [
            LabelledImage(s.sample_id, s.image_bytes, s.attributes or {})
            for s in synthetic_samples(self.pretrain_seed, self.pretrain_size)
        ]

    def base_annotator(self) -> tuple[Annotator, int]:
        if self.kind != "probe":
            return super().base_annotator()
        pre = self.pretrain_images()
        model = pretrained_probe([p.image_bytes for p in pre], [p.attributes for p in pre], seed=self.pretrain_seed)
        return model, len(pre)


class SimulatedLabellingResource(LabellingResource):
    """``oracle`` (the default here): the simulated human answers every task at once from the synthetic
    pool's truth, wrong with probability ``oracle_error_rate``; the other kinds as in production."""

    backend_kind: str = "oracle"
    oracle_error_rate: float = 0.05
    oracle_seed: int = 0

    def backend(self, store: Store) -> LabellingBackend:
        if self.backend_kind == "oracle":
            return SimulatedOracleInbox(
                store, synthetic_truth(store), SimulatedOracle(self.oracle_error_rate, self.oracle_seed)
            )
        return super().backend(store)
