"""Every object-store key the flywheel reads or writes, in one place.

Keys are relative to the store's root (``Store.url``); each function names one kind of object. A stage
that needs a key imports it from here, so a layout change is one edit and two stages can never
disagree about where a thing lives. Sections follow the stages in flywheel order.
"""

from __future__ import annotations

# -- core: content-addressed images and per-asset tables ----------------------------------------------
BLOBS_PREFIX = "blobs"
TABLES_PREFIX = "tables"


def blob_key(sha256: str, ext: str) -> str:
    """An image's bytes, stored once by content: ``blobs/<sha[:2]>/<sha>.<ext>``."""
    return f"{BLOBS_PREFIX}/{sha256[:2]}/{sha256}.{ext}"


def table_key(asset: str, partition: str | None = None) -> str:
    """One Parquet table per asset (and per partition of a partitioned asset)."""
    return f"{TABLES_PREFIX}/{asset}/{partition}.parquet" if partition else f"{TABLES_PREFIX}/{asset}.parquet"


def table_prefix(asset: str) -> str:
    """The folder of a partitioned asset's tables."""
    return f"{TABLES_PREFIX}/{asset}"


# -- sourcing -------------------------------------------------------------------------------------------
FAILED_URLS_KEY = "sourcing/failed_urls.parquet"
POOL_INDEX_PREFIX = "pool/index"
POOL_INDEX_COMPACTED_KEY = f"{POOL_INDEX_PREFIX}/compacted.parquet"
POOL_PHASH_SCHEME_KEY = f"{POOL_INDEX_PREFIX}/phash_scheme.json"
POOL_MARKERS_PREFIX = "pool/recorded"


def sourcing_staging_prefix(batch: str) -> str:
    """A sourcing batch's plan and outcome chunks while it runs (removed when it finishes)."""
    return f"sourcing/staging/{batch}"


def raw_table_key(batch: str) -> str:
    return table_key("raw_images", batch)


def sourcing_log_key(batch: str) -> str:
    return table_key("sourcing_log", batch)


POOL_INDEX_SEGMENTS_PREFIX = f"{POOL_INDEX_PREFIX}/segments"


def pool_index_segment_key(batch: str) -> str:
    return f"{POOL_INDEX_SEGMENTS_PREFIX}/{batch}.parquet"


def folder_listing_key(digest: str) -> str:
    """The cached file listing of a folder dataset (``digest`` names the folder and its layout)."""
    return f"sourcing/folders/{digest}.json"


def folder_skipped_key(digest: str) -> str:
    """The entries a folder dataset's walk skipped, each with its reason code and a short description."""
    return f"sourcing/folders/{digest}-skipped.parquet"


def api_state_prefix(api: str) -> str:
    """A web API's rate-limit call log, response cache and per-batch cursors."""
    return f"sourcing/apis/{api}"


def api_rate_limit_key(api: str) -> str:
    """The call log shared by every source using ``api``."""
    return f"{api_state_prefix(api)}/rate_limit.json"


def api_cache_prefix(api: str) -> str:
    """Cached response bodies of ``api``, one ``<sha256>.json`` per request."""
    return f"{api_state_prefix(api)}/cache"


def api_batches_prefix(source: str) -> str:
    return f"{api_state_prefix(source)}/batches"


def api_batch_key(source: str, batch_index: int) -> str:
    """A source's batch: its start and end cursor, items and report."""
    return f"{api_batches_prefix(source)}/{batch_index:06d}.json"


# -- filtering ------------------------------------------------------------------------------------------
FAKE_HEAD_KEY = "models/fake_person/head.npz"
FAKE_HEAD_TRAINING_PREFIX = "training/fake_person"


# -- parsing --------------------------------------------------------------------------------------------
def parsing_mask_key(parser_version: str, sha256: str) -> str:
    """An image's ATR label map from one parser version (a grey PNG)."""
    return f"parsing/{parser_version}/{sha256[:2]}/{sha256}.png"


# -- annotation -----------------------------------------------------------------------------------------
ANNOTATOR_MODELS_PREFIX = "models/annotator"
BASE_ANNOTATOR_KEY = f"{ANNOTATOR_MODELS_PREFIX}/base.json"
HITL_PREFIX = "hitl"
LABELLING_PREFIX = "labelling"


def annotator_key(version: str) -> str:
    return f"{ANNOTATOR_MODELS_PREFIX}/{version}.zip"


def round_record_key(round_id: str, name: str) -> str:
    """A labelling round's records (``plan.json``, ``result.json``)."""
    return f"{HITL_PREFIX}/{round_id}/{name}"


def labelling_key(round_id: str, name: str) -> str:
    """A labelling backend's files for one round (tasks, answers, pointers)."""
    return f"{LABELLING_PREFIX}/{round_id}/{name}"


# -- datasets -------------------------------------------------------------------------------------------
DATASET_NAME = "cosmicman-hq"
DATASETS_PREFIX = f"datasets/{DATASET_NAME}"
LATEST_DATASET_KEY = f"{DATASETS_PREFIX}/latest.json"


def dataset_version_prefix(version: str) -> str:
    return f"{DATASETS_PREFIX}/{version}"


def dataset_staging_prefix(version: str) -> str:
    """Where the build of a version is staged before it is published (hidden from version listings); one
    folder per version name, so a build killed mid-way finds what it already wrote."""
    return f"{DATASETS_PREFIX}/.tmp/{version}"


# shards are stored once by content and shared by every version that references them
DATASET_SHARDS_PREFIX = f"{DATASETS_PREFIX}/shards"
# a shard whose bytes were re-read and matched once is not re-read by later checks
DATASET_VERIFIED_PREFIX = f"{DATASETS_PREFIX}/verified"


def dataset_shard_key(sha256: str) -> str:
    """A shard's tar, named by the sha256 of its bytes."""
    return f"{DATASET_SHARDS_PREFIX}/{sha256}.tar"


def dataset_shard_index_key(sha256: str) -> str:
    """The manifest rows of every sample a shard holds (written with the shard, immutable as it is)."""
    return f"{DATASET_SHARDS_PREFIX}/{sha256}.parquet"


# manifest segments: the manifest rows of the shards one build wrote, stored once by content, shared like shards
DATASET_MANIFESTS_PREFIX = f"{DATASETS_PREFIX}/manifests"


def dataset_verified_key(sha256: str) -> str:
    """The record that a shard or segment (by its sha256) had its bytes re-read and matched once."""
    return f"{DATASET_VERIFIED_PREFIX}/{sha256}.json"


# -- training -------------------------------------------------------------------------------------------
MODELS_PREFIX = "models/daring_unet"
LATENT_CACHE_PREFIX = "cache/latents"
TRAINING_RUN_FILE = "training_run.json"  # a published model's record, written last: its completion marker
# Dagster Pipes message chunks of the training / evaluation pods, one folder per session
PIPES_MESSAGES_PREFIX = "pipes/messages"
# the resolved configs those pods are launched with, passed by reference (cosmicman.core.launch_config)
PIPES_CONFIGS_PREFIX = "pipes/configs"


def launch_config_key(sha256: str) -> str:
    """A launch's resolved config, stored once by content: ``pipes/configs/<sha256>.json``."""
    return f"{PIPES_CONFIGS_PREFIX}/{sha256}.json"


def model_prefix(name: str) -> str:
    return f"{MODELS_PREFIX}/{name}"


def training_run_key(name: str) -> str:
    return f"{model_prefix(name)}/{TRAINING_RUN_FILE}"


# -- evaluation -----------------------------------------------------------------------------------------
TEST_PROMPTS_PREFIX = "evaluation/test_prompts"
LATEST_TEST_PROMPTS_KEY = f"{TEST_PROMPTS_PREFIX}/latest.json"
EVALUATIONS_PREFIX = "evaluation/runs"
EVALUATION_REPORT_FILE = "report.json"  # written last: an evaluation's completion marker
EVALUATION_REFERENCES_PREFIX = "evaluation/references"


def evaluation_reference_key(digest: str) -> str:
    """The real I_e images' ceiling and features under one set of scorers (``cosmicman.evaluation.reference_side``)."""
    return f"{EVALUATION_REFERENCES_PREFIX}/{digest}.npz"


def test_prompts_key(version: str) -> str:
    return f"{TEST_PROMPTS_PREFIX}/{version}.jsonl"


def evaluation_prefix(model_name: str, prompt_set_version: str, settings: str) -> str:
    """One model on one prompt set with one set of scorer settings (``settings``: a digest)."""
    return f"{EVALUATIONS_PREFIX}/{model_name}/{prompt_set_version}-{settings}"


# -- simulation (the synthetic world's ground truth, beside and never inside the pool) ---------------------
SYNTHETIC_TRUTH_PREFIX = table_prefix("synthetic_truth")


def synthetic_truth_key(batch: str) -> str:
    return table_key("synthetic_truth", batch)


def truth_mask_key(sha256: str) -> str:
    return f"truth/masks/{sha256[:2]}/{sha256}.png"


def synthetic_humanart_prefix(seed: int, size: int) -> str:
    """The local fake-person head's training folder of renders, in the Human-Art layout."""
    return f"{FAKE_HEAD_TRAINING_PREFIX}/synthetic_humanart/seed{seed}-n{size}"
