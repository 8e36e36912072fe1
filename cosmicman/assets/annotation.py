"""Annotate Anyone: the evaluation set and the human-in-the-loop rounds.

The rounds are dynamic partitions (``round-001``, ...). Per round, ``labelling_tasks`` measures the
annotator in force on I_e and submits the round :func:`~cosmicman.annotation.rounds.plan_round` decides;
``human_labels`` collects the answers (the labels_arrived sensor runs it when they are in);
``annotator`` fine-tunes on :func:`~cosmicman.annotation.rounds.training_labels`, measures again and
closes the round with :func:`~cosmicman.annotation.rounds.close_round` (the hitl_round sensor opens the
next round, or annotates the pool with the final annotator: ``annotations``, batch by batch, in
``cosmicman.assets.pool_annotation``). The rules live in ``cosmicman.annotation.rounds``, the records in
``cosmicman.annotation.ledger``; I_e, round 0 and the labelling backend come from the resources.
"""

import json
from collections.abc import Sequence

import dagster as dg
import polars as pl

from cosmicman.annotation.accuracy import mean_accuracy, per_category_accuracy
from cosmicman.annotation.annotator import load_annotator
from cosmicman.annotation.eval_set import EVAL_SET_TABLE, read_eval_items
from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.labelling import LabelTask
from cosmicman.annotation.ledger import RoundLedger, round_id, round_number
from cosmicman.annotation.rounds import (
    AnnotatorInForce,
    RoundPlan,
    close_round,
    labels_asked,
    plan_round,
    round_labels,
    training_labels,
)
from cosmicman.assets.annotation_metadata import accuracy_by_tag, labels_by_tag, round_history, weakest_categories
from cosmicman.assets.automation import on_missing
from cosmicman.assets.common import Progress, content_digest
from cosmicman.assets.metadata import location, tidy_metadata
from cosmicman.assets.plots import image_grid
from cosmicman.core.imageio import decode_image
from cosmicman.core.keys import annotator_key, table_key, truth_mask_key
from cosmicman.core.store import Store
from cosmicman.resources.annotation import AnnotatorResource, LabellingResource
from cosmicman.resources.storage import ObjectStoreResource

annotation_rounds = dg.DynamicPartitionsDefinition(name="annotation_rounds")
GROUP = "annotation"
LABEL_SCHEMA = {"image_sha256": pl.Utf8, "category": pl.Utf8, "answer": pl.Utf8, "source": pl.Utf8, "round": pl.Int64}


def _kept_pool(store: Store) -> pl.DataFrame:
    frames = [df.filter(pl.col("decision") == "kept") for _, df in store.iter_tables("tables/filtered_images")]
    if not frames:
        raise RuntimeError("the pool has no filtered batch yet: materialize raw_images and filtered_images first")
    return pl.concat(frames).sort("sha256")


@dg.asset(kinds={"python", "parquet"}, group_name=GROUP, code_version="2", automation_condition=on_missing())
def eval_set(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, annotation: AnnotatorResource
) -> dg.MaterializeResult:
    """I_e: images with exact ground truth (from the annotation resource), on which every annotator
    version is measured."""
    store = object_store.store()
    labelled = annotation.eval_images()
    rows, images = [], []
    progress = Progress(context.log, "storing I_e", len(labelled))
    for i, item in enumerate(labelled):
        put = store.put_blob(item.image_bytes, "jpg")
        mkey = None
        if item.mask_png is not None:
            mkey = truth_mask_key(put.sha256)
            if not store.exists(mkey):
                store.write_bytes(mkey, item.mask_png)
        rows.append(
            {
                "sha256": put.sha256,
                "blob_key": put.key,
                "sample_id": item.name,
                "attributes": json.dumps(dict(item.attributes), sort_keys=True),
                "mask_key": mkey,
            }
        )
        if i < 12:
            images.append(decode_image(item.image_bytes))
        progress(i + 1)
    df = pl.DataFrame(
        rows,
        schema={
            "sha256": pl.Utf8,
            "blob_key": pl.Utf8,
            "sample_id": pl.Utf8,
            "attributes": pl.Utf8,
            "mask_key": pl.Utf8,
        },
    )
    store.write_table(EVAL_SET_TABLE, df)
    return dg.MaterializeResult(
        metadata={"images": len(df), "sample": image_grid(images)},
        data_version=dg.DataVersion(content_digest(df["sha256"].to_list())),
    )


@dg.asset(kinds={"python"}, group_name=GROUP, code_version="2", automation_condition=on_missing())
def base_annotator(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, annotation: AnnotatorResource
) -> dg.MaterializeResult:
    """Round 0: the probe trained on the resource's round-0 set, or the stock VLM checkpoint (kind "vlm")."""
    store = object_store.store()
    model, trained_on = annotation.base_annotator()
    key = annotator_key(model.version)
    store.write_bytes(key, model.save())
    RoundLedger(store).write_base(model.version, key)
    return dg.MaterializeResult(
        metadata={
            "version": model.version,
            "kind": annotation.kind,
            "trained_on": trained_on,
            "path": location(store.uri(key)),
        },
        data_version=dg.DataVersion(model.version),
    )


def _human_labels(store: Store, number: int) -> list[LabelRecord]:
    df = store.read_table(table_key("human_labels", round_id(number)))
    return [LabelRecord(**r) for r in df.iter_rows(named=True)]


def _labels_behind(store: Store, ledger: RoundLedger, rounds: Sequence[int]) -> list[LabelRecord]:
    """The labels (people's and implied) of ``rounds``, in round order."""
    out: list[LabelRecord] = []
    for n in rounds:
        plan = ledger.plan(n)
        out += round_labels(plan, plan.sampled, _human_labels(store, n))
    return out


@dg.asset(
    deps=["eval_set", "base_annotator", "filtered_images"],
    partitions_def=annotation_rounds,
    kinds={"python"},
    group_name=GROUP,
    code_version="3",
)
def labelling_tasks(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    annotation: AnnotatorResource,
    labelling: LabellingResource,
) -> dg.MaterializeResult:
    """Measure the annotator in force on I_e and submit the round the rules decide (categories, sample
    I_r of pool images no earlier round asked about), with the annotator's answers pre-filled."""
    store = object_store.store()
    ledger = RoundLedger(store)
    number = round_number(context.partition_key)
    if number > 1:
        prev = ledger.result(number - 1)
        if prev is None:
            raise dg.Failure(f"{round_id(number - 1)} has not finished: its labels and annotator come first")
        if prev.stop:
            raise dg.Failure(f"the loop stopped after {round_id(number - 1)} ({prev.stop_reason})")
    before = ledger.in_force(before_round=number)
    model = load_annotator(store.read_bytes(before.key))
    acc = per_category_accuracy(model, read_eval_items(store))
    backend = labelling.backend(store)
    pool = _kept_pool(store)
    shas = pool["sha256"].to_list()
    plan = plan_round(
        number,
        before,
        acc,
        shas,
        ledger.asked_before(number),
        backend.can_label,
        backend.applicable_category_count(shas),
        annotation.rules(),
    )
    keys = dict(pool.select("sha256", "blob_key").iter_rows())
    predicted = (
        model.predict([store.read_bytes(keys[s]) for s in plan.sampled], plan.categories_sent) if plan.sampled else []
    )
    tasks = [
        LabelTask(
            f"{context.partition_key}-{sha[:16]}",
            sha,
            store.uri(keys[sha]),
            plan.categories_sent,
            predicted=pred,
            model_version=model.version,
        )
        for sha, pred in zip(plan.sampled, predicted)
    ]
    backend.submit(context.partition_key, number, tasks)
    ledger.write_plan(plan)
    context.log.info(f"{context.partition_key}: {len(plan.categories_sent)} categories sent, {len(tasks)} tasks")
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "round": number,
                "annotator": before.version,
                "mean_accuracy": mean_accuracy(acc),
                "categories_sent": len(plan.categories_sent),
                "tasks": len(tasks),
                "questions_asked_max": len(tasks) * len(plan.categories_sent),
                "full_manual_labels": plan.full_manual_labels,
                "accuracy_by_tag": accuracy_by_tag(acc, None, annotation.rules().threshold),
                "weakest_categories": weakest_categories(acc, None, plan.categories_sent),
            }
        )
    )


@dg.asset(
    deps=["labelling_tasks"],
    partitions_def=annotation_rounds,
    kinds={"python", "parquet"},
    group_name=GROUP,
    code_version="2",
)
def human_labels(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, labelling: LabellingResource
) -> dg.MaterializeResult:
    """The round's human answers, once every task is answered (the labels_arrived sensor runs this)."""
    store = object_store.store()
    number = round_number(context.partition_key)
    backend = labelling.backend(store)
    labels, pending = backend.collect(context.partition_key, number)
    if pending:
        raise dg.Failure(
            f"{context.partition_key}: {pending} tasks are still unanswered; the labels_arrived "
            "sensor materializes this asset when they are in"
        )
    df = pl.DataFrame([lab.to_dict() for lab in labels], schema=LABEL_SCHEMA)
    store.write_table(table_key("human_labels", context.partition_key), df)
    backend.close_round(context.partition_key)
    plan = RoundLedger(store).plan(number)
    share = len(df) / plan.full_manual_labels if plan.full_manual_labels else 0.0
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "round": number,
                "labels": len(df),
                "images": df["image_sha256"].n_unique() if len(df) else 0,
                "manual_share": share,
                "labels_by_tag": labels_by_tag(dict(df.group_by("category").len().iter_rows())),
            }
        ),
        data_version=dg.DataVersion(
            content_digest(f"{a}|{b}|{c}" for a, b, c in df.select("image_sha256", "category", "answer").iter_rows())
        ),
    )


def _finetuned(
    store: Store, ledger: RoundLedger, plan: RoundPlan, annotation: AnnotatorResource
) -> tuple[AnnotatorInForce, dict[str, float], int]:
    """The round's fine-tuned annotator (stored), its accuracy on I_e and the labels people gave."""
    base = load_annotator(store.read_bytes(plan.before.key))
    human = _human_labels(store, plan.round)
    if not human:
        return plan.before, dict(plan.accuracy_before), 0
    labels = training_labels(
        plan, round_labels(plan, plan.sampled, human), _labels_behind(store, ledger, plan.before.label_rounds)
    )
    keys = dict(_kept_pool(store).select("sha256", "blob_key").iter_rows())
    images = {sha: store.read_bytes(keys[sha]) for sha in {lab.image_sha256 for lab in labels}}
    model = annotation.finetune(base, labels, images, round=plan.round)
    key = annotator_key(model.version)
    store.write_bytes(key, model.save())
    return (
        AnnotatorInForce(model.version, key),
        per_category_accuracy(model, read_eval_items(store)),
        labels_asked(human),
    )


@dg.asset(
    deps=["human_labels", "eval_set"],
    partitions_def=annotation_rounds,
    kinds={"python"},
    group_name=GROUP,
    code_version="3",
)
def annotator(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, annotation: AnnotatorResource
) -> dg.MaterializeResult:
    """The annotator fine-tuned on the round's training labels, measured again on I_e, and the round
    closed by the rules (adopted or not, stop or go on)."""
    store = object_store.store()
    ledger = RoundLedger(store)
    plan = ledger.plan(round_number(context.partition_key))
    after, acc_after, asked = _finetuned(store, ledger, plan, annotation)
    result = close_round(plan, after, acc_after, asked, annotation.rules())
    ledger.write_result(result)
    asked_total = sum(r.labels_asked for r in ledger.results())
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "round": plan.round,
                "version": result.annotator_after,
                "adopted": result.adopted,
                "annotator_in_force": result.annotator_in_force,
                "mean_accuracy_before": result.mean_accuracy_before,
                "mean_accuracy_after": result.mean_accuracy_after,
                "gain_points": 100 * result.gain,
                "labels_asked": asked,
                "manual_share": result.cost_share,
                "labels_asked_total": asked_total,
                "manual_share_total": asked_total / plan.full_manual_labels if plan.full_manual_labels else 0.0,
                "stop": result.stop,
                "stop_reason": result.stop_reason,
                "accuracy_by_tag": accuracy_by_tag(
                    dict(plan.accuracy_before), dict(result.accuracy_after), annotation.rules().threshold
                ),
                "weakest_categories": weakest_categories(
                    dict(plan.accuracy_before), dict(result.accuracy_after), plan.categories_sent
                ),
                **round_history(ledger),
            }
        ),
        data_version=dg.DataVersion(result.annotator_in_force),
    )
