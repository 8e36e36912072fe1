"""The annotation stage's resources: the AI annotator with the loop's rules, and where questions go to people.

Production reads I_e and the round-0 training set from configured folders of labelled images
(:mod:`cosmicman.annotation.eval_set`); the local environment plugs in subclasses that render them from
the synthetic world and answer with the simulated oracle (``cosmicman.environments.simulated_annotation``).
"""

from __future__ import annotations

from typing import Literal

import dagster as dg

from cosmicman.annotation.annotator import Annotator
from cosmicman.annotation.eval_set import LabelledImage, read_labelled_folder
from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.labelling import FileInbox, LabellingBackend
from cosmicman.annotation.probe_annotator import ProbeAnnotator
from cosmicman.annotation.rounds import DEFAULT_THRESHOLD, HitlRules
from cosmicman.core.store import Store


class AnnotatorResource(dg.ConfigurableResource):
    """The AI annotator of Annotate Anyone and its round settings (paper: 85 % threshold, people answer
    every category in round 1)."""

    kind: str = "probe"
    # kind "vlm": a BLIP-2 / InstructBLIP checkpoint (local folder or staged hub id), fine-tuned with LoRA
    vlm_model: str | None = None
    vlm_finetune_steps: int = 200
    # I_e and the probe's round-0 training set: folders of images with labels.jsonl (any fsspec URL)
    eval_set_url: str | None = None
    pretrain_set_url: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    first_round: Literal["all", "below_threshold"] = "all"
    round_sample_size: int = 32
    round_seed: int = 0
    max_rounds: int = 5
    min_gain: float = 0.0

    def rules(self) -> HitlRules:
        return HitlRules(
            threshold=self.threshold,
            sample_size=self.round_sample_size,
            seed=self.round_seed,
            max_rounds=self.max_rounds,
            min_gain=self.min_gain,
            first_round=self.first_round,
        )

    def eval_images(self) -> list[LabelledImage]:
        """I_e: images with exact ground truth."""
        if not self.eval_set_url:
            raise ValueError(
                "AnnotatorResource.eval_set_url is not set: point it at a folder of labelled images "
                "(images + labels.jsonl) for the evaluation set I_e"
            )
        return read_labelled_folder(self.eval_set_url)

    def pretrain_images(self) -> list[LabelledImage]:
        """The probe's round-0 training set (labels as a generic annotator would give them)."""
        if not self.pretrain_set_url:
            raise ValueError(
                "AnnotatorResource.pretrain_set_url is not set: point it at a folder of labelled "
                "images (images + labels.jsonl) to train the probe's round 0, or use kind 'vlm'"
            )
        return read_labelled_folder(self.pretrain_set_url)

    def base_annotator(self) -> tuple[Annotator, int]:
        """Round 0 and how many images trained it: the probe trained on the pretraining set, or the stock
        VLM checkpoint."""
        if self.kind == "probe":
            pre = self.pretrain_images()
            return ProbeAnnotator.train([p.image_bytes for p in pre], [p.attributes for p in pre]), len(pre)
        if self.kind == "vlm":
            if not self.vlm_model:
                raise ValueError(
                    "annotator kind 'vlm' needs vlm_model: a BLIP-2 / InstructBLIP folder or staged hub id"
                )
            from cosmicman.annotation.vlm_annotator import VLMAnnotator

            return VLMAnnotator.from_pretrained(self.vlm_model), 0
        raise ValueError(f"unknown annotator kind {self.kind!r}; use 'probe' or 'vlm'")

    def finetune(self, model: Annotator, labels: list[LabelRecord], images: dict[str, bytes], round: int) -> Annotator:
        from cosmicman.annotation.vlm_annotator import VLMAnnotator

        if self.kind == "vlm" and isinstance(model, VLMAnnotator):
            return model.finetune(labels, images, round=round, steps=self.vlm_finetune_steps)
        return model.finetune(labels, images, round=round)


class LabellingResource(dg.ConfigurableResource):
    """Where questions go to people: ``inbox`` (JSON-lines files under the object store, answered by
    people or another tool) or ``label_studio`` (one Label Studio project per round; see
    ``cosmicman.annotation.label_studio``). Production passes the Label Studio URL and API key as
    ``dg.EnvVar``s."""

    backend_kind: str = "inbox"
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    label_studio_import_chunk_size: int = 500
    # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for a store on local disk (none needed for s3://)
    label_studio_local_files_root: str | None = None
    # s3:// images: Label Studio resolves them through an S3 source storage on the project, presigned at
    # view time (or streamed through it: presign False), so they never expire. Credentials and endpoint as
    # the Label Studio *server* reaches the bucket (read-only keys, as dg.EnvVar); unset keys leave it to
    # the server's own credentials, an unset endpoint to AWS S3 or the server's own S3_ENDPOINT
    label_studio_s3_access_key_id: str | None = None
    label_studio_s3_secret_access_key: str | None = None
    label_studio_s3_endpoint: str | None = None
    label_studio_s3_region: str | None = None
    label_studio_s3_presign: bool = True
    label_studio_s3_presign_ttl_min: int = 15
    # the labels sensor reads at most this many changed tasks per tick (the rest on the next ticks)
    label_studio_change_page_size: int = 1000
    label_studio_timeout_s: float = 60.0

    def backend(self, store: Store) -> LabellingBackend:
        if self.backend_kind == "inbox":
            return FileInbox(store)
        if self.backend_kind == "label_studio":
            from cosmicman.annotation.label_studio import LabelStudioBackend
            from cosmicman.annotation.label_studio_images import S3Access

            if not self.label_studio_url:
                raise ValueError("backend_kind='label_studio' needs label_studio_url (and label_studio_api_key)")
            return LabelStudioBackend(
                store,
                self.label_studio_url,
                self.label_studio_api_key,
                import_chunk_size=self.label_studio_import_chunk_size,
                local_files_root=self.label_studio_local_files_root,
                s3_access=S3Access(
                    access_key_id=self.label_studio_s3_access_key_id,
                    secret_access_key=self.label_studio_s3_secret_access_key,
                    endpoint=self.label_studio_s3_endpoint,
                    region=self.label_studio_s3_region,
                    presign=self.label_studio_s3_presign,
                    presign_ttl_min=self.label_studio_s3_presign_ttl_min,
                ),
                change_page_size=self.label_studio_change_page_size,
                timeout_s=self.label_studio_timeout_s,
            )
        raise ValueError(f"unknown labelling backend {self.backend_kind!r}; use 'inbox' or 'label_studio'")
