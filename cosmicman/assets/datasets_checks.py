"""Checks on CosmicMan-HQ versions: the shards on storage match the version's manifest.

A check of its own (not a result inside ``cosmicman_hq``), so it can be run again from the UI at any time
against the version the latest materialization names: a shard lost or changed on storage later shows too.
Blocking: in the run that writes a version it stops anything downstream in that run, and automation does not
train on a version whose check failed (``cosmicman.assets.automation``).
"""

import dagster as dg

from cosmicman.assets.metadata import table
from cosmicman.datasets.verification import verify_version
from cosmicman.resources.storage import ObjectStoreResource

COSMICMAN_HQ = dg.AssetKey("cosmicman_hq")
PROBLEMS_SHOWN = 50


@dg.asset_check(
    asset=COSMICMAN_HQ,
    blocking=True,
    description="Every shard the version's shards.parquet and manifest list exists with its recorded size and "
    "sha256 and holds the manifest's samples, and no unlisted shard lies beside them.",
)
def shards_match_manifest(
    context: dg.AssetCheckExecutionContext, object_store: ObjectStoreResource
) -> dg.AssetCheckResult:
    record = context.instance.get_latest_materialization_event(COSMICMAN_HQ)
    materialization = record.asset_materialization if record else None
    if materialization is None or "version" not in materialization.metadata:
        return dg.AssetCheckResult(passed=False, description="cosmicman_hq has no materialization naming a version")
    version = str(materialization.metadata["version"].value)
    store = object_store.store()
    verified = verify_version(store.url, version, store.storage_options)
    return dg.AssetCheckResult(
        passed=verified.intact,
        description=f"{version}: {verified.shards} shards, {verified.samples} samples, {verified.n_bytes} bytes "
        + ("match the manifest" if verified.intact else f"checked, {len(verified.problems)} problem(s)"),
        metadata={
            "version": version,
            "shards": verified.shards,
            "samples": verified.samples,
            "bytes": verified.n_bytes,
            "problems": table(
                [{"problem": p} for p in verified.problems[:PROBLEMS_SHOWN]],
                columns=["problem"],
                descriptions={"problem": f"the first {PROBLEMS_SHOWN} problems found"},
            ),
            "problems_total": len(verified.problems),
        },
    )
