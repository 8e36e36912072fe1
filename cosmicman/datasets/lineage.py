"""Lineage audit: what a dataset version or a trained model was built from.

For a CosmicMan-HQ version the answer comes from its manifest, where every sample carries its provenance
(source, sourcing batch, filter decision and the filter chain's config, parser version, annotator version
and the labelling rounds behind it). For a trained model it comes from the model's ``training_run.json`` (its shard
URLs name the dataset version; the trainer's code version and config), then the dataset's lineage. Only
what the samples actually used is listed: a sourcing batch whose images were all rejected, or a round
whose labels no sample carries, is not behind the model and is not named. A name that does not exist is
answered with what does (:class:`LineageTargetNotFoundError`).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import fsspec

from cosmicman.core.keys import DATASETS_PREFIX, MODELS_PREFIX, TRAINING_RUN_FILE, model_prefix
from cosmicman.datasets.layout import list_versions, read_manifest, read_stats, version_exists

_SHARD_URL = re.compile(rf"{re.escape(DATASETS_PREFIX)}/(v\d{{4,}})/shard-\d+\.tar$")


class LineageTargetNotFoundError(FileNotFoundError):
    """No published dataset version or model by that name; the message lists the ones the store holds."""


def _listed(names: list[str], what: str, where: str) -> str:
    return f"{what}: {', '.join(names)}" if names else f"{where} holds no {what}"


def published_models(store_url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the published models under the store's models prefix (folders holding a training record)."""
    fs, path = fsspec.core.url_to_fs(store_url, **(storage_options or {}))
    base = posixpath.join(path.rstrip("/"), MODELS_PREFIX)
    fs.invalidate_cache(base)  # fsspec instances are shared and cache listings (s3fs)
    if not fs.exists(base):
        return []
    folders = [p.rstrip("/") for p in fs.ls(base, detail=False)]
    return sorted(posixpath.basename(p) for p in folders if _has_record(fs, p))


def _has_record(fs: Any, folder: str) -> bool:
    # a listing of the folder cached before its record arrived would hide the record (s3fs)
    fs.invalidate_cache(folder)
    return bool(fs.exists(posixpath.join(folder, TRAINING_RUN_FILE)))


def dataset_lineage(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Sourcing batches, sources, filter configs, parser / annotator versions and label rounds of a version."""
    if not version_exists(root, version, storage_options):
        versions = list_versions(root, storage_options)
        raise LineageTargetNotFoundError(
            f"no dataset version {version}; {_listed(versions, 'versions', f'the store {root}')}"
        )
    manifest = read_manifest(root, version, storage_options)
    prov = [json.loads(p) for p in manifest["provenance_json"].to_list()]

    def distinct(key: str) -> list:
        return sorted({p[key] for p in prov if p.get(key) is not None})

    def counts(key: str) -> dict[str, int]:
        # a sample without the field counts as "null", as in the version's stats.json (None does not sort)
        return dict(sorted(Counter("null" if p.get(key) is None else str(p[key]) for p in prov).items()))

    stats = read_stats(root, version, storage_options)
    return {
        "dataset_version": version,
        "samples": manifest.height,
        "created_at": stats.get("created_at"),
        "sourcing_batches": distinct("source_batch"),
        "sources": counts("source"),
        "filter_decisions": counts("filter_decision"),
        "filter_configs": [json.loads(c) for c in distinct("filter_config")],
        "parser_versions": distinct("parser_version"),
        "annotator_versions": distinct("annotator_version"),
        # the rounds whose human labels trained the annotators (and fill the answers) behind the samples
        "label_rounds": sorted({n for p in prov for n in p.get("label_rounds", ())}),
    }


def dataset_of_shards(shard_urls: list[str]) -> tuple[str, str]:
    """(store root URL, version) that a model's shard URLs point into."""
    found = set()
    for url in shard_urls:
        m = _SHARD_URL.search(url)
        if not m:
            raise ValueError(f"{url} is not a CosmicMan-HQ shard URL (…/{DATASETS_PREFIX}/vNNNN/shard-N.tar)")
        found.add((url[: m.start()].rstrip("/"), m.group(1)))
    if len(found) != 1:
        raise ValueError(f"the shards span {len(found)} dataset versions: {sorted(found)}")
    return found.pop()


def model_lineage(
    model_url: str, storage_options: Mapping[str, Any] | None = None, store_url: str | None = None
) -> dict[str, Any]:
    """The model's training record (code version, variant-defining config) and its dataset's lineage.
    ``store_url``: the store whose published models a wrong ``model_url`` is answered with."""
    fs, path = fsspec.core.url_to_fs(model_url, **(storage_options or {}))
    run_path = posixpath.join(path.rstrip("/"), TRAINING_RUN_FILE)
    fs.invalidate_cache(path.rstrip("/"))
    if not fs.exists(run_path):
        known = "not a published model"
        if store_url:
            models = published_models(store_url, storage_options)
            known = _listed(models, f"models under {MODELS_PREFIX}", f"the store {store_url}")
        raise LineageTargetNotFoundError(f"no model at {model_url} (no {TRAINING_RUN_FILE}); {known}")
    record = json.loads(fs.cat_file(run_path))
    root, version = dataset_of_shards(record["data"]["shards"])
    cfg = record["config"]
    return {
        "model": model_url,
        "code_versions": {"trainer": record.get("code_version")},
        "training": {
            k: cfg.get(k)
            for k in ("pretrained", "family", "act_fn", "beta", "hola_reduction", "steps", "seed", "lr", "resolution")
        },
        "finished_at": record.get("finished_at"),
        **dataset_lineage(root, version, storage_options),
    }


def lineage(store_url: str, target: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``target``: a dataset version name (``v0003``), a published model's folder name under the models prefix,
    or a model folder (URL, or key under the store)."""
    if re.fullmatch(r"v\d{4,}", target):
        return dataset_lineage(store_url, target, storage_options)
    if "://" not in target and not target.startswith("/"):
        key = target if "/" in target else model_prefix(target)
        target = f"{store_url.rstrip('/')}/{key}"
    return model_lineage(target, storage_options, store_url=store_url)
