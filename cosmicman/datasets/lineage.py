"""Lineage audit: what a dataset version or a trained model was built from.

For a CosmicMan-HQ version the answer comes from its manifest, where every sample carries its provenance
(source, sourcing batch, filter decision and the filter chain's config, parser version, annotator version
and the labelling rounds behind it). For a trained model it comes from the model's ``training_run.json`` (its shard
URLs and the version it names; the trainer's code version and config), then the dataset's lineage. Only
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
import polars as pl

from cosmicman.core.keys import DATASET_SHARDS_PREFIX, DATASETS_PREFIX, MODELS_PREFIX, TRAINING_RUN_FILE, model_prefix
from cosmicman.datasets.layout import (
    iter_manifest,
    list_versions,
    read_shards_table,
    read_stats,
    version_exists,
)

_SHARD_URL = re.compile(rf"{re.escape(DATASET_SHARDS_PREFIX)}/([0-9a-f]{{64}})\.tar$")
_VERSION_SHARD_URL = re.compile(rf"{re.escape(DATASETS_PREFIX)}/(v\d{{4,}})/shard-\d+\.tar$")
_IN_JSON = ("filter_config", "annotator_version", "label_rounds")  # provenance fields without a manifest column


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
    """Sourcing batches, sources, filter configs, parser / annotator versions and label rounds of a version,
    from its manifest streamed in pieces (only the distinct values and counts are held)."""
    if not version_exists(root, version, storage_options):
        versions = list_versions(root, storage_options)
        raise LineageTargetNotFoundError(
            f"no dataset version {version}; {_listed(versions, 'versions', f'the store {root}')}"
        )
    distinct: dict[str, set] = {k: set() for k in ("source_batch", "parser_version", *_IN_JSON)}
    counts: dict[str, Counter] = {"source": Counter(), "filter_decision": Counter()}
    n = 0
    for piece in iter_manifest(
        root,
        version,
        storage_options,
        ["source_batch", "source", "filter_decision", "parser_version", "provenance_json"],
    ):
        n += piece.height
        found = piece.with_columns(pl.col("provenance_json").str.json_path_match(f"$.{k}").alias(k) for k in _IN_JSON)
        for key, values in distinct.items():
            values.update(found[key].drop_nulls().unique().to_list())
        for key, counter in counts.items():
            # a sample without the field counts as "null", as in the version's stats.json (None does not sort)
            counter.update({"null" if k is None else str(k): v for k, v in found[key].value_counts().iter_rows()})
    stats = read_stats(root, version, storage_options)
    return {
        "dataset_version": version,
        "samples": n,
        "created_at": stats.get("created_at"),
        "sourcing_batches": sorted(distinct["source_batch"]),
        "sources": dict(sorted(counts["source"].items())),
        "filter_decisions": dict(sorted(counts["filter_decision"].items())),
        "filter_configs": [json.loads(c) for c in sorted(distinct["filter_config"])],
        "parser_versions": sorted(distinct["parser_version"]),
        "annotator_versions": sorted(distinct["annotator_version"]),
        # the rounds whose human labels trained the annotators (and fill the answers) behind the samples
        "label_rounds": sorted({n for rounds in distinct["label_rounds"] for n in json.loads(rounds)}),
    }


def dataset_of_shards(
    shard_urls: list[str], storage_options: Mapping[str, Any] | None = None, version: str | None = None
) -> tuple[str, str]:
    """(store root URL, version) that a model's shard URLs point into. Shared shards
    (``…/shards/<sha256>.tar``) belong to every version that references them, so the version is the one the
    training record names (``version``), else the one published version that references exactly these shards.
    A record from before shards were shared names its version in its URLs (``…/vNNNN/shard-N.tar``)."""
    found, shas = set(), set()
    for url in shard_urls:
        if m := _SHARD_URL.search(url):
            found.add((url[: m.start()].rstrip("/"), version))
            shas.add(m.group(1))
        elif m := _VERSION_SHARD_URL.search(url):
            found.add((url[: m.start()].rstrip("/"), m.group(1)))
        else:
            raise ValueError(f"{url} is not a CosmicMan-HQ shard URL (…/{DATASET_SHARDS_PREFIX}/<sha256>.tar)")
    if len(found) != 1:
        raise ValueError(f"the shards span {len(found)} dataset versions: {sorted(found, key=str)}")
    root, named = found.pop()
    if named is not None:
        return root, named
    matching = [
        v
        for v in list_versions(root, storage_options)
        if set(read_shards_table(root, v, storage_options)["sha256"].to_list()) == shas
    ]
    if len(matching) != 1:
        listed = ", ".join(matching) if matching else "none"
        raise ValueError(
            f"the {len(shas)} shards are exactly those of {len(matching)} published versions ({listed}): "
            "the training record must name its data.dataset_version"
        )
    return root, matching[0]


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
    root, version = dataset_of_shards(record["data"]["shards"], storage_options, record["data"].get("dataset_version"))
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
