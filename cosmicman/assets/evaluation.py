"""The test prompt set, the evaluation of each trained variant, and the ablation table."""

import hashlib
import json
from typing import Any

import dagster as dg

from cosmicman.assets.automation import on_missing, on_new_data_version_of, once_deps_settle
from cosmicman.assets.evaluation_metadata import attention_by_group, report_metadata
from cosmicman.assets.metadata import location, table, tidy_metadata
from cosmicman.assets.plots import bar_chart
from cosmicman.assets.training import training_variants
from cosmicman.core.keys import EVALUATION_REPORT_FILE, LATEST_TEST_PROMPTS_KEY, evaluation_prefix, test_prompts_key
from cosmicman.evaluation.prompt_set import PromptSet, write_prompt_set
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.launchers import EvaluationLauncher
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
    kinds={"python"},
    group_name="evaluation",
    code_version="1",
    automation_condition=on_missing(),
)
def test_prompts(object_store: ObjectStoreResource, evaluation_config: EvaluationResource) -> dg.MaterializeResult:
    """The held-out test prompts, each a person's protocol attributes, as a versioned set (the version is a
    digest of the prompts): the paper's 2,048 from a prompts file in production, a small synthetic set
    locally. Every evaluation names the version it was scored on."""
    store = object_store.store()
    prompt_set = PromptSet.from_prompts(evaluation_config.test_attributes(), source="evaluation_config")
    key = test_prompts_key(prompt_set.version)
    if not store.exists(key):
        write_prompt_set(prompt_set.prompts, store.uri(key), **store.storage_options)
    store.write_json(LATEST_TEST_PROMPTS_KEY, {"version": prompt_set.version, "key": key})
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "version": prompt_set.version,
                "prompts": len(prompt_set),
                "path": location(store.uri(key)),
                "first_prompts": table(
                    [
                        {"prompt": i, "attributes": ", ".join(f"{k}={v}" for k, v in p.items())}
                        for i, p in enumerate(prompt_set.prompts[:10])
                    ],
                    columns=["prompt", "attributes"],
                ),
            }
        ),
        data_version=dg.DataVersion(prompt_set.version),
    )


def _settings_digest(config: dict[str, Any]) -> str:
    """What else than the model and the prompts decides the figures: judge, scorers, seeds, steps."""
    keep = {k: v for k, v in config.items() if k not in ("model_url", "prompts_url", "store_url", "output_url")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


@dg.asset(
    deps=["daring_unet", "test_prompts", "eval_set"],
    partitions_def=training_variants,
    kinds={"pytorch"},
    group_name="evaluation",
    code_version="2",
    automation_condition=on_new_data_version_of("daring_unet"),
)
def evaluation(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    evaluation_config: EvaluationResource,
    evaluation_launcher: EvaluationLauncher,
) -> dg.MaterializeResult:
    """One image per test prompt from this variant's model, scored in its own process
    (``python -m cosmicman.evaluation``): semantic accuracy (Acc_obj / tex / shape / all, DSG-style questions
    answered by a judge configured apart from the annotator), FID and KID against the real I_e images,
    CLIPScore and HPSv2. The same scorers on the real images give the ceiling. A model already scored on
    the same prompt set with the same settings is not scored again."""
    store = object_store.store()
    unet = latest_metadata(context.instance, "daring_unet", context.partition_key)
    model_url, dataset_version = unet.get("output_url"), unet.get("dataset_version")
    if not model_url or not dataset_version:
        raise dg.Failure(
            f"daring_unet[{context.partition_key}] has no materialization with an output_url and dataset_version"
        )
    if not store.exists(LATEST_TEST_PROMPTS_KEY):
        raise dg.Failure("no test prompt set yet: materialize test_prompts first")
    prompts = store.read_json(LATEST_TEST_PROMPTS_KEY)
    config = evaluation_config.run_config(
        model_url=str(model_url), prompts_url=store.uri(prompts["key"]), store_url=store.url, output_url=""
    ).to_dict()
    prefix = evaluation_prefix(
        str(model_url).rstrip("/").rsplit("/", 1)[-1], prompts["version"], _settings_digest(config)
    )
    config["output_url"] = store.uri(prefix)
    report_key = f"{prefix}/{EVALUATION_REPORT_FILE}"
    reused = store.exists(report_key)
    if reused:
        context.log.info(f"{prefix} already holds this model's report on this prompt set: reusing it")
    else:
        evaluation_launcher.launch(context, config)
    report = store.read_json(report_key)
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **report_metadata(store, report, context.partition_key),
                "variant": context.partition_key,
                # what evaluation_not_worse_than_previous_version compares across (cosmicman.assets.evaluation_checks)
                "dataset_version": dataset_version,
                "model": location(str(model_url)),
                "report": location(store.uri(report_key)),
                "reused": reused,
            }
        ),
        data_version=dg.DataVersion(f"{prefix}"),
    )


ABLATION_METRICS = ("acc_obj", "acc_tex", "acc_shape", "acc_all", "frechet_distance", "kid", "clip_score", "hpsv2")


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
    by_group: dict[str, dg.TableMetadataValue] = {}
    for variant in VARIANTS:
        ev = latest_metadata(context.instance, "evaluation", variant)
        if not ev:
            continue
        unet = latest_metadata(context.instance, "daring_unet", variant)
        if isinstance(unet.get("attention_in_mask_by_group"), dg.TableMetadataValue):
            by_group[variant] = unet["attention_in_mask_by_group"]
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
                            "kid": r["kid"],
                            "clip_score": r["clip_score"],
                            "hpsv2": r["hpsv2"],
                            "loss_last": r["loss_last"],
                            "attn_in_mask": r["attention_in_mask"],
                        }
                        for r in rows
                    ],
                    columns=["variant", "fd", "kid", "clip_score", "hpsv2", "loss_last", "attn_in_mask"],
                    descriptions={
                        "fd": "Frechet distance to real I_e images (lower is better)",
                        "kid": "kernel inception distance to real I_e images (lower is better)",
                        "attn_in_mask": "share of each caption group's cross-attention inside its parsing mask",
                    },
                ),
                # per caption group, chance beside each variant: where HOLA moves attention, and where it does not
                **(
                    {
                        "attention_in_mask_by_group": table(
                            attention_by_group(by_group), columns=["group", "chance", *by_group]
                        )
                    }
                    if by_group
                    else {}
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
