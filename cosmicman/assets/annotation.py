"""Annotate Anyone: the evaluation set, the human-in-the-loop rounds, annotations and captions.

The rounds are dynamic partitions (``round-001``, ...). Per round, ``labelling_tasks`` measures the
annotator in force on I_e and sends the categories under the threshold to humans on a sample I_r;
``human_labels`` collects their answers (the labels_arrived sensor runs it when they are in);
``annotator`` fine-tunes, measures again and decides whether the loop goes on (the hitl_round sensor
opens the next round, or annotates the pool with the final annotator). The work is in
``cosmicman.annotation.annotation`` and ``cosmicman.annotation.ledger``.
"""

import hashlib
import json

import dagster as dg
import polars as pl

from cosmicman.annotation.annotation import (
    AnnotationItem,
    HitlRoundResult,
    LabelRecord,
    categories_below,
    implied_labels,
    load_annotator,
    mean_accuracy,
    merge_human_answers,
    per_category_accuracy,
    select_round_sample,
    should_stop,
)
from cosmicman.annotation.labelling import LabelTask
from cosmicman.annotation.ledger import BASE_ANNOTATOR_KEY, RoundLedger, round_id, round_number
from cosmicman.assets.common import (
    Progress,
    content_digest,
    image_grid_markdown,
    line_charts_markdown,
    table_key,
    table_metadata,
)
from cosmicman.core.imageio import decode_image
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption
from cosmicman.resources.annotation import AnnotatorResource, LabellingResource, synthetic_truth
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.truth import mask_png, truth_mask_key
from cosmicman.simulation.world import SyntheticWorld

annotation_rounds = dg.DynamicPartitionsDefinition(name="annotation_rounds")
EVAL_SET_KEY = table_key("eval_set")
GROUP = "annotation"
LABEL_SCHEMA = {"image_sha256": pl.Utf8, "category": pl.Utf8, "answer": pl.Utf8, "source": pl.Utf8,
                "round": pl.Int64}


def _kept_pool(store: Store) -> pl.DataFrame:
    frames = [df.filter(pl.col("decision") == "kept") for _, df in store.iter_tables("tables/filtered_images")]
    if not frames:
        raise RuntimeError("the pool has no filtered batch yet: materialize raw_images and filtered_images first")
    return pl.concat(frames).sort("sha256")


def _eval_items(store: Store) -> list[AnnotationItem]:
    df = store.read_table(EVAL_SET_KEY)
    return [AnnotationItem.from_bytes(store.read_bytes(k), json.loads(a))
            for k, a in df.select("blob_key", "attributes").iter_rows()]


def _accuracy_table(before: dict[str, float], after: dict[str, float] | None = None) -> pl.DataFrame:
    protocol = load_protocol()
    rows = []
    for cat in protocol.categories:
        if cat.name in before:
            row = {"category": cat.name, "tag": cat.tag, "before": before[cat.name]}
            if after is not None:
                row["after"] = after.get(cat.name, float("nan"))
            rows.append(row)
    return pl.DataFrame(rows)


@dg.asset(kinds={"python", "parquet"}, group_name=GROUP, code_version="1")
def eval_set(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
             annotation: AnnotatorResource) -> dg.MaterializeResult:
    """I_e: synthetic people with exact ground truth, on which every annotator version is measured."""
    store = object_store.store()
    world = SyntheticWorld(seed=annotation.eval_seed)
    rows, images = [], []
    progress = Progress(context.log, "rendering I_e", annotation.eval_size)
    for i in range(annotation.eval_size):
        s = world.sample(i, case="kept")
        put = store.put_blob(s.image_bytes, "jpg")
        mkey = truth_mask_key(put.sha256)
        if not store.exists(mkey):
            store.write_bytes(mkey, mask_png(s.mask))
        rows.append({"sha256": put.sha256, "blob_key": put.key, "sample_id": s.sample_id,
                     "attributes": json.dumps(s.attributes, sort_keys=True), "mask_key": mkey})
        if i < 12:
            images.append(decode_image(s.image_bytes))
        progress(i + 1)
    df = pl.DataFrame(rows)
    store.write_table(EVAL_SET_KEY, df)
    return dg.MaterializeResult(metadata={"images": len(df), "seed": annotation.eval_seed,
                                          "sample": image_grid_markdown(images)},
                                data_version=dg.DataVersion(content_digest(df["sha256"].to_list())))


@dg.asset(kinds={"python"}, group_name=GROUP, code_version="1")
def base_annotator(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                   annotation: AnnotatorResource) -> dg.MaterializeResult:
    """Round 0: the probe pretrained on noisy generic labels (standing in for a stock VLM), or the stock
    VLM checkpoint itself (annotator kind "vlm")."""
    store = object_store.store()
    samples = []
    if annotation.kind == "probe":
        world = SyntheticWorld(seed=annotation.pretrain_seed)
        samples = [world.sample(i, case="kept") for i in range(annotation.pretrain_size)]
    model = annotation.base_annotator([s.image_bytes for s in samples], [s.attributes for s in samples])
    key = f"models/annotator/{model.version}.zip"
    store.write_bytes(key, model.save())
    store.write_json(BASE_ANNOTATOR_KEY, {"version": model.version, "key": key})
    return dg.MaterializeResult(metadata={"version": model.version, "kind": annotation.kind, "trained_on": len(samples),
                                          "path": dg.MetadataValue.path(store.uri(key))},
                                data_version=dg.DataVersion(model.version))


def _labels(store: Store, rounds) -> pl.DataFrame:
    frames = [store.read_table(table_key("human_labels", round_id(n))) for n in rounds]
    return pl.concat(frames) if frames else pl.DataFrame(schema=LABEL_SCHEMA)


def _implied(plan: dict, human: list[LabelRecord]) -> list[LabelRecord]:
    return implied_labels({sha: plan["categories_sent"] for sha in plan["sampled"]}, human, plan["round"])


def _round_history_metadata(ledger: RoundLedger) -> dict:
    curve = ledger.curve()
    if not curve:
        return {}
    rounds = [int(p["round"]) for p in curve]
    return {"curve": table_metadata(pl.DataFrame(curve), limit=100),
            "curve_plot": line_charts_markdown(rounds, {
                "mean accuracy on I_e": [p["mean_accuracy"] for p in curve],
                "labels asked, % of a full manual pass": [100 * p["manual_share"] for p in curve]})}


@dg.asset(deps=["eval_set", "base_annotator", "filtered_images"], partitions_def=annotation_rounds,
          kinds={"python"}, group_name=GROUP, code_version="2")
def labelling_tasks(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                    annotation: AnnotatorResource, labelling: LabellingResource) -> dg.MaterializeResult:
    """Measure the annotator in force on I_e; categories under the threshold go to humans, on a sample I_r
    of pool images no earlier round asked about, with the annotator's answers pre-filled."""
    store = object_store.store()
    ledger = RoundLedger(store)
    number = round_number(context.partition_key)
    if number > 1:
        prev = ledger.result(number - 1)
        if prev is None:
            raise dg.Failure(f"{round_id(number - 1)} has not finished: its labels and annotator come first")
        if prev["stop"]:
            raise dg.Failure(f"the loop stopped after {round_id(number - 1)} ({prev['stop_reason']})")
    before = ledger.in_force(before_round=number)
    model = load_annotator(store.read_bytes(before.key))
    acc = per_category_accuracy(model, _eval_items(store))
    sent = categories_below(acc, annotation.threshold)
    backend = labelling.backend(store)
    pool = _kept_pool(store)
    asked_before = {s for n in ledger.rounds() if n < number for s in ledger.plan(n)["sampled"]}
    candidates = [s for s in pool["sha256"].to_list() if s not in asked_before]
    if hasattr(backend, "can_label"):
        candidates = [s for s in candidates if backend.can_label(s)]
    sampled = select_round_sample(candidates, annotation.round_sample_size, seed=annotation.round_seed + number)
    keys = dict(pool.select("sha256", "blob_key").iter_rows())
    tasks = []
    if sent:
        predicted = model.predict([store.read_bytes(keys[s]) for s in sampled], sent) if sampled else []
        tasks = [LabelTask(f"{context.partition_key}-{sha[:16]}", sha, store.uri(keys[sha]), tuple(sent),
                           predicted=pred, model_version=model.version)
                 for sha, pred in zip(sampled, predicted)]
    backend.submit(context.partition_key, number, tasks)
    truth = synthetic_truth(store)
    protocol = load_protocol()
    full_manual = sum(len(protocol.applicable(truth[s])) if s in truth else len(protocol.categories)
                      for s in pool["sha256"].to_list())
    ledger.write_plan(number, {"annotator_before": before.version, "annotator_before_key": before.key,
                               "annotator_before_round": before.round, "label_rounds_before": list(before.label_rounds),
                               "accuracy_before": acc, "categories_sent": sent,
                               "sampled": [t.image_sha256 for t in tasks], "full_manual_labels": full_manual,
                               "threshold": annotation.threshold})
    context.log.info(f"{context.partition_key}: {len(sent)} categories under {annotation.threshold:.0%}, "
                     f"{len(tasks)} tasks sent")
    return dg.MaterializeResult(metadata={
        "round": number, "annotator": before.version, "mean_accuracy": mean_accuracy(acc),
        "categories_sent": dg.MetadataValue.json(sent), "tasks": len(tasks),
        "questions_asked_max": len(tasks) * len(sent), "full_manual_labels": full_manual,
        "accuracy": table_metadata(_accuracy_table(acc), limit=100)})


@dg.asset(deps=["labelling_tasks"], partitions_def=annotation_rounds, kinds={"python", "parquet"},
          group_name=GROUP, code_version="2")
def human_labels(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                 labelling: LabellingResource) -> dg.MaterializeResult:
    """The round's human answers, once every task is answered (the labels_arrived sensor runs this)."""
    store = object_store.store()
    number = round_number(context.partition_key)
    backend = labelling.backend(store)
    labels, pending = backend.collect(context.partition_key, number)
    if pending:
        raise dg.Failure(f"{context.partition_key}: {pending} tasks are still unanswered; the labels_arrived "
                         "sensor materializes this asset when they are in")
    df = pl.DataFrame([lab.to_dict() for lab in labels], schema=LABEL_SCHEMA)
    store.write_table(table_key("human_labels", context.partition_key), df)
    backend.close_round(context.partition_key)
    plan = RoundLedger(store).plan(number)
    share = len(df) / plan["full_manual_labels"] if plan["full_manual_labels"] else 0.0
    return dg.MaterializeResult(metadata={
        "round": number, "labels": len(df), "images": df["image_sha256"].n_unique() if len(df) else 0,
        "manual_share": share, "by_category": dg.MetadataValue.json(dict(df.group_by("category").len().iter_rows()))},
        data_version=dg.DataVersion(content_digest(f"{a}|{b}|{c}" for a, b, c in df.select(
            "image_sha256", "category", "answer").iter_rows())))


@dg.asset(deps=["human_labels", "eval_set"], partitions_def=annotation_rounds, kinds={"python"}, group_name=GROUP,
          code_version="2")
def annotator(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
              annotation: AnnotatorResource) -> dg.MaterializeResult:
    """The annotator fine-tuned on the human labels of the categories sent this round (this round's and
    the earlier rounds' behind the annotator in force), measured again on I_e, with the stop decision.
    A round that brings no gain is recorded but not adopted: the annotator before it stays in force."""
    store = object_store.store()
    ledger = RoundLedger(store)
    number = round_number(context.partition_key)
    plan = ledger.plan(number)
    base = load_annotator(store.read_bytes(plan["annotator_before_key"]))
    rounds = [*plan["label_rounds_before"], number]
    human = [LabelRecord(**r) for r in _labels(store, rounds).iter_rows(named=True)]
    # parents implied by the detail answers of each round (free labels: a colour answered means the
    # garment exists), as run_hitl_round does
    implied = [lab for n in rounds for lab in _implied(ledger.plan(n), [h for h in human if h.round == n])]
    trained = set(plan["categories_sent"]) | {lab.category for lab in implied if lab.round == number}
    labels = [lab for lab in human + implied if lab.category in trained]
    pool = _kept_pool(store)
    keys = dict(pool.select("sha256", "blob_key").iter_rows())
    images = {sha: store.read_bytes(keys[sha]) for sha in {lab.image_sha256 for lab in labels}}
    asked = sum(h.round == number for h in human)
    model = annotation.finetune(base, labels, images, round=number) if asked else base
    acc_after = per_category_accuracy(model, _eval_items(store)) if asked else dict(plan["accuracy_before"])
    result = HitlRoundResult(number, base.version, model.version, plan["accuracy_before"], acc_after,
                             tuple(plan["categories_sent"]), tuple(plan["sampled"]), asked,
                             plan["full_manual_labels"], plan["threshold"])
    stop, reason = should_stop([result])
    adopted = asked > 0 and reason != "no gain"
    key = f"models/annotator/{model.version}.zip"
    if asked:
        store.write_bytes(key, model.save())
    in_force = (model.version, key, number, [*plan["label_rounds_before"], number]) if adopted else \
        (base.version, plan["annotator_before_key"], plan["annotator_before_round"], plan["label_rounds_before"])
    if not stop and number >= annotation.max_rounds:
        stop, reason = True, f"max rounds ({annotation.max_rounds})"
    ledger.write_result(number, {**result.to_dict(), "adopted": adopted, "annotator_in_force": in_force[0],
                                 "annotator_key": in_force[1], "annotator_round": in_force[2],
                                 "label_rounds": in_force[3], "stop": stop, "stop_reason": reason})
    asked_total = sum(r["labels_asked"] for r in ledger.results())
    return dg.MaterializeResult(metadata={
        "round": number, "version": model.version, "adopted": adopted, "annotator_in_force": in_force[0],
        "mean_accuracy_before": result.mean_accuracy_before, "mean_accuracy_after": result.mean_accuracy_after,
        "gain_points": 100 * result.gain, "labels_asked": asked, "manual_share": result.cost_share,
        "labels_asked_total": asked_total,
        "manual_share_total": asked_total / plan["full_manual_labels"] if plan["full_manual_labels"] else 0.0,
        "stop": stop, "stop_reason": reason,
        "accuracy": table_metadata(_accuracy_table(dict(plan["accuracy_before"]), acc_after), limit=100),
        **_round_history_metadata(ledger)},
        data_version=dg.DataVersion(in_force[0]))


@dg.asset(deps=["annotator", "filtered_images"], kinds={"python", "parquet"}, group_name=GROUP, code_version="2")
def annotations(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Every kept pool image annotated by the annotator in force, with the humans' answers over its own
    (answers follow the protocol's hierarchy)."""
    store = object_store.store()
    ledger = RoundLedger(store)
    if not ledger.results():
        raise dg.Failure("no annotation round has finished: run a round (labelling_tasks, human_labels, annotator)")
    in_force = ledger.in_force()
    model = load_annotator(store.read_bytes(in_force.key))
    human: dict[str, dict[str, str]] = {}
    for sha, cat, ans in _labels(store, in_force.label_rounds).sort("round").select(
            "image_sha256", "category", "answer").iter_rows():
        human.setdefault(sha, {})[cat] = ans
    protocol = load_protocol()
    pool = _kept_pool(store)
    rows, progress = [], Progress(context.log, "annotating", len(pool))
    keys = pool.select("sha256", "blob_key").rows()
    label_rounds = json.dumps(list(in_force.label_rounds))
    for start in range(0, len(keys), 32):
        chunk = keys[start:start + 32]
        preds = model.predict([store.read_bytes(k) for _, k in chunk])
        rows += [{"sha256": sha, "attributes": json.dumps(merge_human_answers(p, human.get(sha, {}), protocol),
                                                          sort_keys=True),
                  "annotator_version": model.version, "annotator_round": in_force.round,
                  "label_rounds": label_rounds, "human_answers": len(human.get(sha, {}))}
                 for (sha, _), p in zip(chunk, preds)]
        progress(start + len(chunk))
    df = pl.DataFrame(rows, schema={"sha256": pl.Utf8, "attributes": pl.Utf8, "annotator_version": pl.Utf8,
                                    "annotator_round": pl.Int64, "label_rounds": pl.Utf8, "human_answers": pl.Int64})
    store.write_table(table_key("annotations"), df)
    truth = synthetic_truth(store)
    checked = [(json.loads(a), truth[s]) for s, a in df.select("sha256", "attributes").iter_rows() if s in truth]
    hits = sum(p.get(k) == v for p, t in checked for k, v in t.items())
    total = sum(len(t) for _, t in checked)
    return dg.MaterializeResult(metadata={
        "images": len(df), "annotator": model.version, "annotator_round": in_force.round,
        "label_rounds": dg.MetadataValue.json(list(in_force.label_rounds)),
        "images_with_human_answers": int((df["human_answers"] > 0).sum()),
        "answer_accuracy_vs_synthetic_truth": hits / total if total else float("nan")},
        data_version=dg.DataVersion(content_digest(f"{s}|{a}" for s, a in df.select("sha256", "attributes").iter_rows())))


@dg.asset(deps=["annotations"], kinds={"python", "parquet"}, group_name=GROUP, code_version="1")
def captions(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Daring's discretized captions: groups, token spans in the CLIP prompt, and their ATR labels."""
    store = object_store.store()
    ann = store.read_table(table_key("annotations"))
    tokenizer = load_clip_tokenizer()
    rows = []
    for sha, attrs in ann.select("sha256", "attributes").iter_rows():
        seed = int.from_bytes(hashlib.sha256(sha.encode()).digest()[:8], "little")
        cap = build_caption(json.loads(attrs), tokenizer=tokenizer, rng=seed)
        rows.append({"sha256": sha, "caption": cap.text, "groups": json.dumps(cap.to_json(), sort_keys=True),
                     "n_groups": len(cap.groups), "n_spans": sum(g.span is not None for g in cap.groups),
                     "n_tokens": len(tokenizer(cap.text)["input_ids"])})
    df = pl.DataFrame(rows)
    store.write_table(table_key("captions"), df)
    return dg.MaterializeResult(metadata={
        "captions": len(df), "mean_groups": float(df["n_groups"].mean()), "mean_tokens": float(df["n_tokens"].mean()),
        "groups_without_span": int((df["n_groups"] - df["n_spans"]).sum()),
        "examples": dg.MetadataValue.md("\n".join(f"- {c}" for c in df["caption"].head(8).to_list()))},
        data_version=dg.DataVersion(content_digest(f"{s}|{g}" for s, g in df.select("sha256", "groups").iter_rows())))
