"""human_parsing in the local environment: the demo folder's images pass the filters but the local parser (the
synthetic world's truth masks) cannot parse them; each is recorded with its reason, and the summary of a turn
counts them by reason."""

from __future__ import annotations

import dagster as dg
import polars as pl

from cosmicman.assets.parsing import human_parsing
from cosmicman.cli.summary import unparsed_images
from cosmicman.core.keys import table_key, truth_mask_key
from cosmicman.core.masks import mask_png
from cosmicman.core.store import Store
from cosmicman.environments.simulated_data import SimulatedParserResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.demo_folder import write_demo_folder
from cosmicman.simulation.world import SyntheticWorld

BATCH = "batch-000000"
NO_TRUTH = (
    "no synthetic-world truth mask: the local parser knows only the images the synthetic source rendered; "
    "name an ATR segmentation checkpoint (ParserResource.model_id) to parse other images"
)


def test_demo_folder_images_are_recorded_unparsed_with_their_reason(tmp_path):
    store = Store(str(tmp_path / "store"))
    rows = []
    # two people the synthetic source rendered (their truth masks beside the pool, as SyntheticSource leaves them)
    world = SyntheticWorld(seed=0)
    for i in range(2):
        sample = world.sample(i, case="kept")
        put = store.put_blob(sample.image_bytes, "jpg")
        assert sample.mask is not None
        store.write_bytes(truth_mask_key(put.sha256), mask_png(sample.mask))
        rows.append({"sha256": put.sha256, "blob_key": put.key, "decision": "kept"})
    # the demo folder's images, kept by the filters, with no truth behind them
    assert write_demo_folder(tmp_path / "folder") == 6
    for path in sorted((tmp_path / "folder").glob("*.jpg")):
        put = store.put_blob(path.read_bytes(), "jpg")
        rows.append({"sha256": put.sha256, "blob_key": put.key, "decision": "kept"})
    rows.append({"sha256": "f" * 64, "blob_key": "blobs/ff/none.jpg", "decision": "face_too_small"})
    store.write_table(table_key("filtered_images", BATCH), pl.DataFrame(rows))

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("sourcing_batches", [BATCH])
    result = dg.materialize(
        [human_parsing],
        partition_key=BATCH,
        instance=instance,
        resources={"object_store": ObjectStoreResource(url=store.url), "parser": SimulatedParserResource()},
    )
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("human_parsing")[0].metadata.items()}
    assert (meta["parsed"], meta["unparsed"]) == (2, 6)
    assert meta["unparsed_by_reason"] == {NO_TRUTH: 6}
    assert store.read_table(table_key("human_parsing", BATCH)).height == 2  # only parsed images go on

    # what the summary of `make run` prints: "6 images not parsed: <reason>"
    assert unparsed_images(instance, [BATCH]) == {NO_TRUTH: 6}
    assert unparsed_images(instance, ["batch-without-materialization"]) == {}
