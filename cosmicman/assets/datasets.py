"""CosmicMan-HQ: immutable dataset versions built from the captioned, parsed, annotated pool."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from cosmicman.assets.automation import on_newly_annotated_images
from cosmicman.assets.metadata import counts_table, location, table, tidy, tidy_metadata
from cosmicman.core.keys import dataset_version_prefix
from cosmicman.datasets.build import ShardPolicy
from cosmicman.datasets.layout import DATACARD, read_stats
from cosmicman.datasets.lineage import dataset_lineage
from cosmicman.datasets.store_pool import version_store
from cosmicman.environments.settings import build_workers, new_images_per_version, shard_policy_settings
from cosmicman.resources.storage import ObjectStoreResource


@dg.asset(
    deps=["captions", "human_parsing", "annotations", "filtered_images"],
    kinds={"python", "webdataset"},
    group_name="datasets",
    code_version="2",
    automation_condition=on_newly_annotated_images(new_images_per_version()),
)
def cosmicman_hq(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """A new immutable CosmicMan-HQ version: content-addressed WebDataset shards and manifest segments (those of
    the version before it are shared; only new or changed samples are written), stats, datacard. When the
    pool's content equals the latest version's, that version is reused instead of duplicated. A run killed
    mid-build resumes shard by shard."""
    store = object_store.store()
    samples, max_bytes, min_live = shard_policy_settings()
    try:
        built = version_store(store, ShardPolicy(samples, max_bytes, min_live), workers=build_workers())
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    version = built.version
    if built.reused:
        context.log.info(f"pool unchanged since {version}: reusing it")
    else:
        context.log.info(f"{version}: {built.counts}")
    if built.changes:
        context.log.info(f"{version} vs {built.changes['old']}: {built.changes}")
    stats = read_stats(store.url, version, store.storage_options)
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "version": version,
                "reused": built.reused,
                "samples": stats["n_images"],
                "fingerprint": built.fingerprint,
                "statistics": _statistics(stats),
                "sources": counts_table(stats.get("sources", {}), "source"),
                "caption_groups": _caption_groups(stats),
                # added / removed / relabelled samples against the version before it (none for the first)
                "changes": _changes(built.changes),
                # the whole stats.json, for scripts (the CLI summary prints its numbers)
                "stats": dg.MetadataValue.json(stats),
                "lineage": dg.MetadataValue.json(dataset_lineage(store.url, version, store.storage_options)),
                "url": location(store.uri(dataset_version_prefix(version))),
                "datacard": dg.MetadataValue.md(
                    store.read_bytes(f"{dataset_version_prefix(version)}/{DATACARD}").decode()
                ),
            }
        ),
        data_version=dg.DataVersion(f"{version}-{built.fingerprint}"),
    )


def _statistics(stats: Mapping[str, Any]) -> dg.TableMetadataValue:
    """The version's single-number statistics (the paper's Table 1 columns), one row each."""
    rows = [
        {"statistic": k, "value": str(tidy(v))}
        for k, v in stats.items()
        if isinstance(v, int | float | str) and not k.endswith("_note")
    ]
    return table(rows, columns=["statistic", "value"])


def _caption_groups(stats: Mapping[str, Any]) -> dg.TableMetadataValue:
    """How often each caption group is present, and how often it was dropped, per image."""
    present, dropped = stats.get("group_frequency", {}), stats.get("group_dropped_frequency", {})
    return table(
        [{"group": g, "frequency": f, "dropped": dropped.get(g, 0.0)} for g, f in present.items()],
        columns=["group", "frequency", "dropped"],
        descriptions={"dropped": "frequency of the group dropped from the caption"},
    )


def _changes(changes: Mapping[str, Any] | None) -> dg.MetadataValue:
    if not changes:
        return dg.MetadataValue.text("first version: nothing before it to compare with")
    return table(
        [
            {"against": changes["old"], "change": k, "samples": changes[k]}
            for k in ("added", "removed", "relabelled", "unchanged")
        ],
        columns=["against", "change", "samples"],
    )
