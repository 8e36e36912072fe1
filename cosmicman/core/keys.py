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
POOL_MARKERS_PREFIX = "pool/recorded"


def sourcing_staging_prefix(batch: str) -> str:
    """A sourcing batch's plan and outcome chunks while it runs (removed when it finishes)."""
    return f"sourcing/staging/{batch}"


def raw_table_key(batch: str) -> str:
    return table_key("raw_images", batch)


def sourcing_log_key(batch: str) -> str:
    return table_key("sourcing_log", batch)


def pool_index_segment_key(batch: str) -> str:
    return f"{POOL_INDEX_PREFIX}/segments/{batch}.parquet"


def folder_listing_key(digest: str) -> str:
    """The cached file listing of a folder dataset (``digest`` names the folder and its layout)."""
    return f"sourcing/folders/{digest}.json"


def api_state_prefix(api: str) -> str:
    """A web API's rate-limit call log, response cache and per-batch cursors."""
    return f"sourcing/apis/{api}"


# -- filtering ------------------------------------------------------------------------------------------
FAKE_HEAD_KEY = "models/fake_person/head.npz"
FAKE_HEAD_TRAINING_PREFIX = "training/fake_person"

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


# -- training -------------------------------------------------------------------------------------------
MODELS_PREFIX = "models/daring_unet"
LATENT_CACHE_PREFIX = "cache/latents"


def model_prefix(name: str) -> str:
    return f"{MODELS_PREFIX}/{name}"


# -- simulation (the synthetic world's ground truth, beside and never inside the pool) ---------------------
SYNTHETIC_TRUTH_PREFIX = table_prefix("synthetic_truth")


def synthetic_truth_key(batch: str) -> str:
    return table_key("synthetic_truth", batch)


def truth_mask_key(sha256: str) -> str:
    return f"truth/masks/{sha256[:2]}/{sha256}.png"
