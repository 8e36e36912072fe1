"""Evaluation of a trained model: semantic accuracy (Acc_obj/tex/shape/all) and a Fréchet distance."""

import math
from typing import Any

import dagster as dg

from cosmicman.annotation.annotator import load_annotator
from cosmicman.annotation.eval_set import read_eval_items
from cosmicman.annotation.ledger import RoundLedger
from cosmicman.assets.automation import on_new_data_version_of, once_deps_settle
from cosmicman.assets.metadata import location, table, tidy_metadata
from cosmicman.assets.plots import bar_chart, image_grid
from cosmicman.assets.training import training_variants
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption
from cosmicman.evaluation.features import RandomConvFeatures
from cosmicman.evaluation.frechet import frechet_distance
from cosmicman.model.metrics import semantic_accuracy
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.storage import ObjectStoreResource


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    """Metadata values of the latest materialization of one partition of ``asset`` ({} when none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].event_log_entry.asset_materialization is None:
        return {}
    return {k: v.value for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


@dg.asset(
    deps=["daring_unet", "annotations", "eval_set"],
    partitions_def=training_variants,
    kinds={"pytorch"},
    group_name="evaluation",
    code_version="1",
    automation_condition=on_new_data_version_of("daring_unet"),
)
def evaluation(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, evaluation_config: EvaluationResource
) -> dg.MaterializeResult:
    """Generate one image per held-out test prompt; the annotator answers each prompt's questions on
    its image (semantic accuracy, as the paper's DSG-style metric), and a Fréchet distance compares
    generated with real I_e images over an offline feature extractor. The same metrics on the real
    images give the ceiling the VQA backend allows."""
    from cosmicman.model.pipelines import load_pipeline, local_model_dir, render_images  # diffusers: heavy

    store = object_store.store()
    unet = latest_metadata(context.instance, "daring_unet", context.partition_key)
    model_url, dataset_version = unet.get("output_url"), unet.get("dataset_version")
    if not model_url or not dataset_version:
        raise dg.Failure(
            f"daring_unet[{context.partition_key}] has no materialization with an output_url and dataset_version"
        )
    truths = evaluation_config.test_attributes()
    tokenizer = load_clip_tokenizer()
    prompts = [build_caption(t, tokenizer=tokenizer, rng=i, group_dropout=0.0).text for i, t in enumerate(truths)]
    with local_model_dir(model_url) as model_dir:
        pipe = load_pipeline(model_dir)
        context.log.info(f"generating {len(prompts)} images")
        images = render_images(
            pipe,
            prompts,
            seeds=[evaluation_config.prompt_seed + i for i in range(len(prompts))],
            steps=evaluation_config.inference_steps,
            guidance_scale=evaluation_config.guidance_scale,
        )
    vqa = load_annotator(store.read_bytes(RoundLedger(store).in_force().key))
    generated = semantic_accuracy(vqa.predict(images), truths)
    real_items = [(it.image, it.attributes) for it in read_eval_items(store) if it.attributes is not None]
    real_images = [image for image, _ in real_items]
    real = semantic_accuracy(vqa.predict(real_images), [attributes for _, attributes in real_items])
    features = RandomConvFeatures(seed=evaluation_config.feature_seed)
    fd = frechet_distance(features(images), features(real_images))
    metrics = {**generated, "frechet_distance": fd}
    bad = [k for k, v in metrics.items() if not (isinstance(v, float) and math.isfinite(v))]
    if bad:
        raise dg.Failure(f"evaluation produced non-finite metrics: {bad}")
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **metrics,
                # the same accuracies of the annotator on real I_e images: the most the VQA backend can give
                **{f"ceiling_{k}": v for k, v in real.items()},
                "metrics": table(
                    [{"metric": k, "generated": v, "real_images": real.get(k)} for k, v in metrics.items()],
                    columns=["metric", "generated", "real_images"],
                ),
                "accuracy_chart": bar_chart(
                    generated,
                    title=f"{context.partition_key}: semantic accuracy",
                    references=real,
                    reference_label="real images",
                ),
                "variant": context.partition_key,
                # what evaluation_not_worse_than_previous_version compares across (cosmicman.assets.evaluation_checks)
                "dataset_version": dataset_version,
                "feature_extractor": features.name,
                "model_url": model_url,
                "model": location(model_url),
                "n_prompts": len(prompts),
                "samples": image_grid(images[:12], prompts[:12], thumb=(192, 192), cols=4),
            }
        )
    )


ABLATION_METRICS = ("acc_obj", "acc_tex", "acc_shape", "acc_all", "frechet_distance")


@dg.asset(
    deps=["evaluation"],
    kinds={"python"},
    group_name="evaluation",
    code_version="1",
    automation_condition=once_deps_settle(),
)
def ablation_table(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every evaluated variant side by side, with its training loss: Daring's and Prime's ablation."""
    rows: list[dict[str, Any]] = []
    for variant in VARIANTS:
        ev = latest_metadata(context.instance, "evaluation", variant)
        if not ev:
            continue
        unet = latest_metadata(context.instance, "daring_unet", variant)
        rows.append(
            {
                "variant": variant,
                **{k: ev.get(k) for k in ABLATION_METRICS},
                "loss_last": unet.get("loss_last"),
                "attention_in_mask": unet.get("attention_in_mask"),
                "act_fn": unet.get("act_fn"),
                "ceiling_acc_all": ev.get("ceiling_acc_all"),
            }
        )
    if not rows:
        raise dg.Failure("no variant has been evaluated yet: materialize evaluation partitions first")
    # attention_in_mask: share of each caption group's cross-attention inside its parsing mask (HOLA's aim)
    # two narrow tables rather than one wide one: each fits the asset page's value column
    ceilings = {r["variant"]: r["ceiling_acc_all"] for r in rows if r["ceiling_acc_all"] is not None}
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "variants": len(rows),
                "table": table(rows, columns=["variant", "acc_obj", "acc_tex", "acc_shape", "acc_all"]),
                "fidelity_and_training": table(
                    [
                        {
                            "variant": r["variant"],
                            "fd": r["frechet_distance"],
                            "loss_last": r["loss_last"],
                            "attn_in_mask": r["attention_in_mask"],
                        }
                        for r in rows
                    ],
                    columns=["variant", "fd", "loss_last", "attn_in_mask"],
                    descriptions={
                        "fd": "Frechet distance to real I_e images (lower is better)",
                        "attn_in_mask": "share of each caption group's cross-attention inside its parsing mask",
                    },
                ),
                "acc_all_chart": bar_chart(
                    {r["variant"]: r["acc_all"] for r in rows},
                    title="acc_all per variant",
                    references=ceilings,
                    reference_label="real images",
                ),
                "frechet_distance_chart": bar_chart(
                    {r["variant"]: r["frechet_distance"] for r in rows}, title="Frechet distance (lower is better)"
                ),
            }
        )
    )
