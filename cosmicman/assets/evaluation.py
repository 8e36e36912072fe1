"""Evaluation of a trained model: semantic accuracy (Acc_obj/tex/shape/all) and a Fréchet distance."""

import math

import dagster as dg
import numpy as np

from cosmicman.assets.annotation import ROUND_RESULT_KEY, _eval_items
from cosmicman.assets.common import image_grid_markdown
from cosmicman.data.annotation import load_annotator
from cosmicman.data.captions import build_caption
from cosmicman.data.synthetic import SyntheticWorld
from cosmicman.data.tokenizer import load_clip_tokenizer
from cosmicman.model.metrics import RandomConvFeatures, frechet_distance, semantic_accuracy
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import EvaluationResource


@dg.asset(deps=["daring_unet", "annotator", "eval_set"], kinds={"pytorch"}, group_name="evaluation",
          code_version="1")
def evaluation(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
               evaluation_config: EvaluationResource) -> dg.MaterializeResult:
    """Generate one image per held-out test prompt; the annotator answers each prompt's questions on
    its image (semantic accuracy, as the paper's DSG-style metric), and a Fréchet distance compares
    generated with real I_e images over an offline feature extractor. The same metrics on the real
    images give the ceiling the VQA backend allows."""
    from cosmicman.model.generate import generate, load_pipeline, local_model_dir  # diffusers pipelines: heavy

    store = object_store.store()
    record = context.instance.get_latest_materialization_event(dg.AssetKey("daring_unet"))
    model_url = record.asset_materialization.metadata["output_url"].value if record else None
    if not model_url:
        raise dg.Failure("daring_unet has no materialization with an output_url")
    world = SyntheticWorld(seed=evaluation_config.prompt_seed)
    rng = np.random.default_rng(evaluation_config.prompt_seed)
    truths = [world.random_attributes(rng) for _ in range(evaluation_config.n_prompts)]
    tokenizer = load_clip_tokenizer()
    prompts = [build_caption(t, tokenizer=tokenizer, rng=i, group_dropout=0.0).text for i, t in enumerate(truths)]
    with local_model_dir(model_url) as model_dir:
        pipe = load_pipeline(model_dir)
        context.log.info(f"generating {len(prompts)} images")
        images = generate(pipe, prompts, steps=evaluation_config.inference_steps,
                          guidance_scale=evaluation_config.guidance_scale, seed=evaluation_config.prompt_seed)
    vqa = load_annotator(store.read_bytes(store.read_json(ROUND_RESULT_KEY)["annotator_key"]))
    generated = semantic_accuracy(vqa.predict(images), truths)
    real_items = _eval_items(store)
    real = semantic_accuracy(vqa.predict([it.image for it in real_items]), [it.attributes for it in real_items])
    features = RandomConvFeatures(seed=evaluation_config.feature_seed)
    fd = frechet_distance(features(images), features([it.image for it in real_items]))
    metrics = {**generated, "frechet_distance": fd}
    bad = [k for k, v in metrics.items() if not (isinstance(v, float) and math.isfinite(v))]
    if bad:
        raise dg.Failure(f"evaluation produced non-finite metrics: {bad}")
    return dg.MaterializeResult(metadata={
        **metrics, "feature_extractor": features.name, "model_url": model_url, "n_prompts": len(prompts),
        "real_images_ceiling": dg.MetadataValue.json(real),
        "samples": image_grid_markdown(images[:12], prompts[:12], thumb=(96, 96))})
