"""Evaluation of a trained model: semantic accuracy (Acc_obj/tex/shape/all) and a Fréchet distance."""

import math

import dagster as dg

from cosmicman.annotation.annotator import load_annotator
from cosmicman.annotation.eval_set import read_eval_items
from cosmicman.annotation.ledger import RoundLedger
from cosmicman.assets.common import image_grid_markdown
from cosmicman.assets.training import training_variants
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption
from cosmicman.model.metrics import RandomConvFeatures, frechet_distance, semantic_accuracy
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
)
def evaluation(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, evaluation_config: EvaluationResource
) -> dg.MaterializeResult:
    """Generate one image per held-out test prompt; the annotator answers each prompt's questions on
    its image (semantic accuracy, as the paper's DSG-style metric), and a Fréchet distance compares
    generated with real I_e images over an offline feature extractor. The same metrics on the real
    images give the ceiling the VQA backend allows."""
    from cosmicman.model.generate import generate, load_pipeline, local_model_dir  # diffusers pipelines: heavy

    store = object_store.store()
    model_url = latest_metadata(context.instance, "daring_unet", context.partition_key).get("output_url")
    if not model_url:
        raise dg.Failure(f"daring_unet[{context.partition_key}] has no materialization with an output_url")
    truths = evaluation_config.test_attributes()
    tokenizer = load_clip_tokenizer()
    prompts = [build_caption(t, tokenizer=tokenizer, rng=i, group_dropout=0.0).text for i, t in enumerate(truths)]
    with local_model_dir(model_url) as model_dir:
        pipe = load_pipeline(model_dir)
        context.log.info(f"generating {len(prompts)} images")
        images = generate(
            pipe,
            prompts,
            steps=evaluation_config.inference_steps,
            guidance_scale=evaluation_config.guidance_scale,
            seed=evaluation_config.prompt_seed,
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
        metadata={
            **metrics,
            "variant": context.partition_key,
            "feature_extractor": features.name,
            "model_url": model_url,
            "n_prompts": len(prompts),
            "real_images_ceiling": dg.MetadataValue.json(real),
            "samples": image_grid_markdown(images[:12], prompts[:12], thumb=(96, 96)),
        }
    )


ABLATION_METRICS = ("acc_obj", "acc_tex", "acc_shape", "acc_all", "frechet_distance")


@dg.asset(deps=["evaluation"], kinds={"python"}, group_name="evaluation", code_version="1")
def ablation_table(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every evaluated variant side by side, with its training loss: Daring's and Prime's ablation."""
    rows = []
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
                "model": ev.get("model_url"),
            }
        )
    if not rows:
        raise dg.Failure("no variant has been evaluated yet: materialize evaluation partitions first")
    # attention_in_mask: share of each caption group's cross-attention inside its parsing mask (HOLA's aim)
    header = ["variant", *ABLATION_METRICS, "loss_last", "attention_in_mask"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(f"{r[h]:.4f}" if isinstance(r[h], float) else str(r[h]) for h in header) + " |" for r in rows
    ]
    return dg.MaterializeResult(
        metadata={
            "variants": len(rows),
            "table": dg.MetadataValue.md("\n".join(lines)),
            "rows": dg.MetadataValue.json(rows),
        }
    )
