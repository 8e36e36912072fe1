from __future__ import annotations

import json

import dagster as dg

from cosmicman.annotation.annotation import Annotator, LabelRecord, ProbeAnnotator, SimulatedOracle
from cosmicman.annotation.labelling import FileInbox, LabellingBackend, SimulatedOracleInbox
from cosmicman.core.store import Store


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
    # kind "vlm": a BLIP-2 / InstructBLIP checkpoint (local folder or staged hub id), fine-tuned with LoRA
    vlm_model: str | None = None
    vlm_finetune_steps: int = 200
    threshold: float = 0.85
    round_sample_size: int = 32
    eval_size: int = 60
    eval_seed: int = 10_000
    pretrain_size: int = 120
    pretrain_seed: int = 20_000
    round_seed: int = 0
    max_rounds: int = 5

    def base_annotator(self, pretrain_images: list[bytes], pretrain_attributes: list[dict]) -> Annotator:
        """Round 0: the probe pretrained on simulated generic labels, or the stock VLM checkpoint."""
        if self.kind == "probe":
            return ProbeAnnotator.pretrained(pretrain_images, pretrain_attributes, seed=self.pretrain_seed)
        if self.kind == "vlm":
            if not self.vlm_model:
                raise ValueError("annotator kind 'vlm' needs vlm_model: a BLIP-2 / InstructBLIP folder or staged hub id")
            from cosmicman.annotation.vlm import VLMAnnotator

            return VLMAnnotator.from_pretrained(self.vlm_model)
        raise ValueError(f"unknown annotator kind {self.kind!r}; use 'probe' or 'vlm'")

    def finetune(self, model: Annotator, labels: list[LabelRecord], images: dict[str, bytes], round: int) -> Annotator:
        if self.kind == "vlm":
            return model.finetune(labels, images, round=round, steps=self.vlm_finetune_steps)
        return model.finetune(labels, images, round=round)


class LabellingResource(dg.ConfigurableResource):
    """Where questions go to humans: ``oracle`` (simulated human from synthetic truth), ``inbox``
    (JSON-lines files under the object store, answered by people or another tool) or ``label_studio``
    (one Label Studio project per round; see ``cosmicman.annotation.label_studio``). Production passes the
    Label Studio URL and API key as ``dg.EnvVar``s."""

    backend_kind: str = "oracle"
    oracle_error_rate: float = 0.05
    oracle_seed: int = 0
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    label_studio_import_chunk_size: int = 500
    # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for a store on local disk (none needed for s3://)
    label_studio_local_files_root: str | None = None
    label_studio_presign_expiry_s: int = 7 * 24 * 3600
    label_studio_timeout_s: float = 60.0

    def backend(self, store: Store) -> LabellingBackend:
        if self.backend_kind == "inbox":
            return FileInbox(store)
        if self.backend_kind == "oracle":
            return SimulatedOracleInbox(store, synthetic_truth(store),
                                        SimulatedOracle(self.oracle_error_rate, self.oracle_seed))
        if self.backend_kind == "label_studio":
            from cosmicman.annotation.label_studio import LabelStudioBackend

            if not self.label_studio_url:
                raise ValueError("backend_kind='label_studio' needs label_studio_url (and label_studio_api_key)")
            return LabelStudioBackend(store, self.label_studio_url, self.label_studio_api_key,
                                      import_chunk_size=self.label_studio_import_chunk_size,
                                      local_files_root=self.label_studio_local_files_root,
                                      presign_expiry_s=self.label_studio_presign_expiry_s,
                                      timeout_s=self.label_studio_timeout_s)
        raise ValueError(f"unknown labelling backend {self.backend_kind!r}; use 'oracle', 'inbox' or 'label_studio'")
