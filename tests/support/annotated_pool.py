"""A pool annotated batch by batch through the real ``annotations`` and ``captions`` assets: its set-up and the
figure read back from the materializations (tests/assets/test_pool_annotation.py and bench/scale.py)."""

from pathlib import Path

import dagster as dg
import polars as pl

from cosmicman.annotation.ledger import RoundLedger
from cosmicman.annotation.rounds import AnnotatorInForce, HitlRules, RoundPlan, close_round
from cosmicman.assets.annotation import LABEL_SCHEMA, annotation_rounds
from cosmicman.assets.captions import captions
from cosmicman.assets.common import sourcing_batches
from cosmicman.assets.pool_annotation import build_annotations
from cosmicman.core.keys import annotator_key, table_key
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.pretraining import pretrained_probe
from cosmicman.simulation.world import SyntheticWorld

FIRST, SECOND = "batch-00000", "batch-00001"
# kept and rejected images of each batch: only the kept ones are annotated
KEPT = {FIRST: 4, SECOND: 3}
REJECTED = {FIRST: 2, SECOND: 1}


def age_answer() -> str:
    (age,) = [c for c in load_protocol().categories if c.name == "age"]
    return age.answers[-1]


def annotated_pool(root: Path) -> dict:
    """Two filtered batches in a store, an adopted round-1 annotator trained on round 1's human labels, and
    those labels: one answer about an image of each batch and one about an image of neither."""
    store = Store(str(root / "store"))
    world = SyntheticWorld(seed=21)
    images: dict[str, list[str]] = {}
    index = 0
    for batch in (FIRST, SECOND):
        decisions = ["kept"] * KEPT[batch] + ["too_small"] * REJECTED[batch]
        puts = [store.put_blob(world.sample(index + i, case="kept").image_bytes, "jpg") for i in range(len(decisions))]
        index += len(decisions)
        store.write_table(
            table_key("filtered_images", batch),
            pl.DataFrame(
                {"sha256": [p.sha256 for p in puts], "blob_key": [p.key for p in puts], "decision": decisions}
            ),
        )
        images[batch] = [p.sha256 for p in puts]
    pretrain = [world.sample(100 + i, case="kept") for i in range(8)]
    model = pretrained_probe([s.image_bytes for s in pretrain], [s.attributes for s in pretrain], seed=0)
    store.write_bytes(annotator_key(model.version), model.save())
    ledger = RoundLedger(store)
    ledger.write_base(model.version, annotator_key(model.version))
    before = {"a": 0.25, "b": 1.0}
    plan = RoundPlan(1, ledger.base(), before, tuple(before), (), 100, 0.5)
    ledger.write_plan(plan)
    after = AnnotatorInForce(model.version, annotator_key(model.version))
    result = close_round(plan, after, {"a": 0.75, "b": 1.0}, 3, HitlRules(threshold=0.5))
    assert result.adopted and result.in_force.label_rounds == (1,)
    ledger.write_result(result)
    labelled = {FIRST: images[FIRST][0], SECOND: images[SECOND][0], "elsewhere": "f" * 64}
    store.write_table(
        table_key("human_labels", "round-001"),
        pl.DataFrame(
            [
                {"image_sha256": sha, "category": "age", "answer": age_answer(), "source": "human", "round": 1}
                for sha in labelled.values()
            ],
            schema=LABEL_SCHEMA,
        ),
    )
    return {"store": store, "images": images, "labelled": labelled, "version": model.version}


def annotate(instance, store: Store, batch: str) -> dg.ExecuteInProcessResult:
    annotations = build_annotations()
    upstream = [
        dg.AssetSpec("filtered_images", partitions_def=sourcing_batches),
        dg.AssetSpec("annotator", partitions_def=annotation_rounds),
    ]
    return dg.materialize(
        [*upstream, annotations, captions],
        selection=[annotations, captions],
        partition_key=batch,
        instance=instance,
        resources={"object_store": ObjectStoreResource(url=store.url)},
    )


def rows_since(instance, asset: str, figure: str, after: int) -> int:
    """What bench/scale.py adds up: the rows an asset's materializations after storage id ``after`` wrote."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=after), limit=1000
    ).records
    return sum(int(r.asset_materialization.metadata[figure].value) for r in records)


def latest_storage_id(instance) -> int:
    records = instance.fetch_materializations(dg.AssetKey("captions"), limit=1).records
    return records[0].storage_id
