"""Annotate Anyone: the evaluation set, one human-in-the-loop round, annotations and captions."""

import hashlib
import json

import dagster as dg
import polars as pl

from cosmicman.assets.common import Progress, content_digest, image_grid_markdown, table_key, table_metadata
from cosmicman.data.annotation import (AnnotationItem, LabelRecord, ProbeAnnotator, categories_below,
                                       load_annotator, mean_accuracy,
                                       per_category_accuracy, select_round_sample, should_stop,
                                       HitlRoundResult)
from cosmicman.data.captions import build_caption
from cosmicman.data.imageio import decode_image
from cosmicman.data.labelling import LabelTask
from cosmicman.data.protocol import load_protocol
from cosmicman.data.store import Store
from cosmicman.data.synthetic import SyntheticWorld
from cosmicman.data.tokenizer import load_clip_tokenizer
from cosmicman.data.truth import mask_png, truth_mask_key
from cosmicman.resources.annotation import AnnotatorResource, LabellingResource, synthetic_truth
from cosmicman.resources.storage import ObjectStoreResource

ROUND = 1
ROUND_ID = f"round-{ROUND:03d}"
EVAL_SET_KEY = table_key("eval_set")
BASE_ANNOTATOR_KEY = "models/annotator/base.json"
ROUND_STATE_KEY = f"hitl/{ROUND_ID}/state.json"
ROUND_RESULT_KEY = f"hitl/{ROUND_ID}/result.json"
GROUP = "annotation"


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
    """Round 0: the light probe annotator, pretrained on noisy generic labels (as a stock VLM would be)."""
    annotation.check_kind()
    store = object_store.store()
    world = SyntheticWorld(seed=annotation.pretrain_seed)
    samples = [world.sample(i, case="kept") for i in range(annotation.pretrain_size)]
    model = ProbeAnnotator.pretrained([s.image_bytes for s in samples], [s.attributes for s in samples],
                                      seed=annotation.pretrain_seed)
    key = f"models/annotator/{model.version}.zip"
    store.write_bytes(key, model.save())
    store.write_json(BASE_ANNOTATOR_KEY, {"version": model.version, "key": key})
    return dg.MaterializeResult(metadata={"version": model.version, "trained_on": len(samples),
                                          "path": dg.MetadataValue.path(store.uri(key))},
                                data_version=dg.DataVersion(model.version))


@dg.asset(deps=["eval_set", "base_annotator", "filtered_images"], kinds={"python"}, group_name=GROUP,
          code_version="1")
def labelling_tasks(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                    annotation: AnnotatorResource, labelling: LabellingResource) -> dg.MaterializeResult:
    """Measure the annotator on I_e; categories under the threshold go to humans, on a sample I_r."""
    store = object_store.store()
    base_ref = store.read_json(BASE_ANNOTATOR_KEY)
    model = load_annotator(store.read_bytes(base_ref["key"]))
    items = _eval_items(store)
    acc = per_category_accuracy(model, items)
    sent = categories_below(acc, annotation.threshold)
    backend = labelling.backend(store)
    pool = _kept_pool(store)
    candidates = pool["sha256"].to_list()
    if hasattr(backend, "can_label"):
        candidates = [s for s in candidates if backend.can_label(s)]
    sampled = select_round_sample(candidates, annotation.round_sample_size, seed=annotation.round_seed + ROUND)
    keys = dict(pool.select("sha256", "blob_key").iter_rows())
    tasks = [LabelTask(f"{ROUND_ID}-{sha[:16]}", sha, store.uri(keys[sha]), tuple(sent)) for sha in sampled] if sent else []
    backend.submit(ROUND_ID, ROUND, tasks)
    truth = synthetic_truth(store)
    protocol = load_protocol()
    full_manual = sum(len(protocol.applicable(truth[s])) if s in truth else len(protocol.categories)
                      for s in pool["sha256"].to_list())
    store.write_json(ROUND_STATE_KEY, {"round": ROUND, "annotator_before": model.version, "accuracy_before": acc,
                                       "categories_sent": sent, "sampled": sampled, "full_manual_labels": full_manual,
                                       "threshold": annotation.threshold})
    context.log.info(f"{ROUND_ID}: {len(sent)} categories under {annotation.threshold:.0%}, {len(tasks)} tasks sent")
    return dg.MaterializeResult(metadata={
        "round": ROUND, "annotator": model.version, "mean_accuracy": mean_accuracy(acc),
        "categories_sent": dg.MetadataValue.json(sent), "tasks": len(tasks),
        "questions_asked_max": len(tasks) * len(sent), "full_manual_labels": full_manual,
        "accuracy": table_metadata(_accuracy_table(acc), limit=100)})


@dg.asset(deps=["labelling_tasks"], kinds={"python", "parquet"}, group_name=GROUP, code_version="1")
def human_labels(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                 labelling: LabellingResource) -> dg.MaterializeResult:
    """The round's human answers, once every task is answered (the labels_arrived sensor runs this)."""
    store = object_store.store()
    labels, pending = labelling.backend(store).collect(ROUND_ID, ROUND)
    if pending:
        raise dg.Failure(f"{ROUND_ID}: {pending} tasks are still unanswered; the labels_arrived sensor "
                         "materializes this asset when they are in")
    df = pl.DataFrame([lab.to_dict() for lab in labels],
                      schema={"image_sha256": pl.Utf8, "category": pl.Utf8, "answer": pl.Utf8,
                              "source": pl.Utf8, "round": pl.Int64})
    store.write_table(table_key("human_labels", ROUND_ID), df)
    labelling.backend(store).close_round(ROUND_ID)
    state = store.read_json(ROUND_STATE_KEY)
    share = len(df) / state["full_manual_labels"] if state["full_manual_labels"] else 0.0
    return dg.MaterializeResult(metadata={
        "labels": len(df), "images": df["image_sha256"].n_unique() if len(df) else 0,
        "manual_share": share, "by_category": dg.MetadataValue.json(dict(df.group_by("category").len().iter_rows()))},
        data_version=dg.DataVersion(content_digest(f"{a}|{b}|{c}" for a, b, c in df.select(
            "image_sha256", "category", "answer").iter_rows())))


@dg.asset(deps=["human_labels", "eval_set"], kinds={"python"}, group_name=GROUP, code_version="1")
def annotator(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
              annotation: AnnotatorResource) -> dg.MaterializeResult:
    """The annotator fine-tuned on the round's human labels, measured again on I_e, with the stop decision."""
    store = object_store.store()
    state = store.read_json(ROUND_STATE_KEY)
    base = load_annotator(store.read_bytes(store.read_json(BASE_ANNOTATOR_KEY)["key"]))
    labels_df = store.read_table(table_key("human_labels", ROUND_ID))
    labels = [LabelRecord(**r) for r in labels_df.iter_rows(named=True)]
    pool = _kept_pool(store)
    keys = dict(pool.select("sha256", "blob_key").iter_rows())
    images = {sha: store.read_bytes(keys[sha]) for sha in {lab.image_sha256 for lab in labels}}
    model = base.finetune(labels, images, round=ROUND) if labels else base
    acc_after = per_category_accuracy(model, _eval_items(store))
    result = HitlRoundResult(ROUND, base.version, model.version, state["accuracy_before"], acc_after,
                             tuple(state["categories_sent"]), tuple(state["sampled"]), len(labels),
                             state["full_manual_labels"], state["threshold"])
    stop, reason = should_stop([result])
    key = f"models/annotator/{model.version}.zip"
    store.write_bytes(key, model.save())
    store.write_json(ROUND_RESULT_KEY, {**result.to_dict(), "annotator_key": key, "stop": stop, "stop_reason": reason})
    return dg.MaterializeResult(metadata={
        "version": model.version, "round": ROUND, "mean_accuracy_before": result.mean_accuracy_before,
        "mean_accuracy_after": result.mean_accuracy_after, "gain_points": 100 * result.gain,
        "labels_asked": len(labels), "manual_share": result.cost_share, "stop": stop, "stop_reason": reason,
        "accuracy": table_metadata(_accuracy_table(dict(state["accuracy_before"]), acc_after), limit=100)},
        data_version=dg.DataVersion(model.version))


@dg.asset(deps=["annotator", "filtered_images"], kinds={"python", "parquet"}, group_name=GROUP, code_version="1")
def annotations(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Every kept pool image annotated by the latest annotator (answers follow the protocol's hierarchy)."""
    store = object_store.store()
    ref = store.read_json(ROUND_RESULT_KEY)
    model = load_annotator(store.read_bytes(ref["annotator_key"]))
    pool = _kept_pool(store)
    rows, progress = [], Progress(context.log, "annotating", len(pool))
    keys = pool.select("sha256", "blob_key").rows()
    for start in range(0, len(keys), 32):
        chunk = keys[start:start + 32]
        preds = model.predict([store.read_bytes(k) for _, k in chunk])
        rows += [{"sha256": sha, "attributes": json.dumps(p, sort_keys=True), "annotator_version": model.version,
                  "annotator_round": ROUND} for (sha, _), p in zip(chunk, preds)]
        progress(start + len(chunk))
    df = pl.DataFrame(rows, schema={"sha256": pl.Utf8, "attributes": pl.Utf8, "annotator_version": pl.Utf8,
                                    "annotator_round": pl.Int64})
    store.write_table(table_key("annotations"), df)
    truth = synthetic_truth(store)
    checked = [(json.loads(a), truth[s]) for s, a in df.select("sha256", "attributes").iter_rows() if s in truth]
    hits = sum(p.get(k) == v for p, t in checked for k, v in t.items())
    total = sum(len(t) for _, t in checked)
    return dg.MaterializeResult(metadata={
        "images": len(df), "annotator": model.version,
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
