"""The pool annotated batch by batch: ``annotations``, partitioned by sourcing batch as parsing is.

A new batch costs the annotation of that batch only. A new annotator in force re-annotates every batch, each
partition in a run of its own (the hitl_round_sensor asks for one run per batch and annotator version; a
backfill over the batch partitions does the same by hand); under ``k8s`` each run is a pod and its annotation
step a GPU pod in the ``gpu_annotation`` pool. A step reads its batch's kept rows and, of the humans' answers,
only those about its batch's images: its memory follows the batch, never the pool.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl

from cosmicman.annotation.accuracy import merge_human_answers
from cosmicman.annotation.annotator import load_annotator
from cosmicman.annotation.ledger import RoundLedger, round_id
from cosmicman.assets.annotation import GROUP
from cosmicman.assets.common import Progress, content_digest, sourcing_batches
from cosmicman.assets.gpu_pools import ANNOTATION_POOL
from cosmicman.core.keys import table_key
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.resources.storage import ObjectStoreResource

ANNOTATIONS_SCHEMA = {
    "sha256": pl.Utf8,
    "attributes": pl.Utf8,
    "annotator_version": pl.Utf8,
    "annotator_round": pl.Int64,
    "label_rounds": pl.Utf8,
    "human_answers": pl.Int64,
}
# images the annotator sees at once: its batch of inputs, whatever the sourcing batch's size
PREDICT_CHUNK = 32


def kept_images(store: Store, batch: str) -> pl.DataFrame:
    """The batch's kept images (``sha256``, ``blob_key``), in sha order."""
    key = table_key("filtered_images", batch)
    if not store.exists(key):
        raise dg.Failure(f"{batch} has no filtered table ({key}): materialize filtered_images[{batch}] first")
    filtered = store.read_table(key, columns=["sha256", "blob_key", "decision"])
    return filtered.filter(pl.col("decision") == "kept").select("sha256", "blob_key").sort("sha256")


def human_answers(store: Store, label_rounds: Sequence[int], images: Iterable[str]) -> dict[str, dict[str, str]]:
    """The answers people gave in ``label_rounds`` about ``images`` only, per image and category (a later
    round's answer over an earlier one's)."""
    wanted = list(images)
    answers: dict[str, dict[str, str]] = {}
    for n in label_rounds:
        labels = store.read_table(
            table_key("human_labels", round_id(n)), columns=["image_sha256", "category", "answer"]
        )
        for sha, category, answer in labels.filter(pl.col("image_sha256").is_in(wanted)).iter_rows():
            answers.setdefault(sha, {})[category] = answer
    return answers


def build_annotations(step_tags: Mapping[str, Any] | None = None) -> dg.AssetsDefinition:
    """``annotations`` for one environment: its step's tags (e.g. a ``dagster-k8s/config`` asking for the VLM's
    GPU) are fixed when a job is built, so the environment chooses them by building the asset."""

    @dg.asset(
        name="annotations",
        partitions_def=sourcing_batches,
        # the latest round's annotator partition records the annotator in force (its data version): a new one
        # makes every batch partition stale; the batch's own filter decisions are filtered_images[batch]
        deps=[dg.AssetDep("annotator", partition_mapping=dg.LastPartitionMapping()), "filtered_images"],
        kinds={"python", "parquet"},
        group_name=GROUP,
        code_version="4",
        pool=ANNOTATION_POOL,
        op_tags=dict(step_tags) if step_tags else None,
    )
    def annotations(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
        """The batch's kept images annotated by the annotator in force, with the humans' answers over its own
        (answers follow the protocol's hierarchy)."""
        store = object_store.store()
        batch = context.partition_key
        ledger = RoundLedger(store)
        if not ledger.results():
            raise dg.Failure("no annotation round has finished: run a round (labelling_tasks, human_labels, annotator)")
        in_force = ledger.in_force()
        model = load_annotator(store.read_bytes(in_force.key))
        keys = kept_images(store, batch).rows()
        human = human_answers(store, in_force.label_rounds, (sha for sha, _ in keys))
        protocol = load_protocol()
        label_rounds = json.dumps(list(in_force.label_rounds))
        rows, progress = [], Progress(context.log, f"annotating {batch}", len(keys))
        for start in range(0, len(keys), PREDICT_CHUNK):
            chunk = keys[start : start + PREDICT_CHUNK]
            preds = model.predict([store.read_bytes(k) for _, k in chunk])
            rows += [
                {
                    "sha256": sha,
                    "attributes": json.dumps(merge_human_answers(p, human.get(sha, {}), protocol), sort_keys=True),
                    "annotator_version": model.version,
                    "annotator_round": in_force.round,
                    "label_rounds": label_rounds,
                    "human_answers": len(human.get(sha, {})),
                }
                for (sha, _), p in zip(chunk, preds)
            ]
            progress(start + len(chunk))
        df = pl.DataFrame(rows, schema=ANNOTATIONS_SCHEMA)
        store.write_table(table_key("annotations", batch), df)
        return dg.MaterializeResult(
            metadata={
                "images": len(df),
                "annotator": model.version,
                "annotator_round": in_force.round,
                "label_rounds": ", ".join(str(n) for n in in_force.label_rounds) or "none",
                "images_with_human_answers": int((df["human_answers"] > 0).sum()),
            },
            data_version=dg.DataVersion(
                content_digest(f"{s}|{a}" for s, a in df.select("sha256", "attributes").iter_rows())
            ),
        )

    return annotations
