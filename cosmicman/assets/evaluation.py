"""The test prompt set, the evaluation of each trained variant, and the ablation table."""

import hashlib
import json
from dataclasses import dataclass
from typing import Any, cast

import dagster as dg

from cosmicman.assets.ablation_rows import BASE_ROW, SD_SUFFIX, PairedGain, over_seeds, paired_gain, seed_figures
from cosmicman.assets.automation import on_missing, on_new_data_version_of, once_deps_settle
from cosmicman.assets.evaluation_metadata import ACCURACIES, METRIC_NOTES, attention_by_group, report_metadata
from cosmicman.assets.gpu_pools import EVALUATION_POOL, launcher_step_tags
from cosmicman.assets.metadata import location, table, tidy_metadata
from cosmicman.assets.plots import bar_chart
from cosmicman.assets.training import training_variants
from cosmicman.core.keys import EVALUATION_REPORT_FILE, LATEST_TEST_PROMPTS_KEY, evaluation_prefix, test_prompts_key
from cosmicman.core.store import Store
from cosmicman.evaluation.prompt_set import PromptSet, write_prompt_set
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.launchers import EvaluationLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    """Metadata values of the latest materialization of one partition of ``asset`` (of the asset when
    ``partition`` is None; {} when none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
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


ABLATION_METRICS = ("acc_obj", "acc_tex", "acc_shape", "acc_all", "frechet_distance", "kid", "clip_score", "hpsv2")


def _settings_digest(config: dict[str, Any]) -> str:
    """What else than the model and the prompts decides the figures: judge, scorers, seeds, steps."""
    keep = {k: v for k, v in config.items() if k not in ("model_url", "prompts_url", "store_url", "output_url")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ScoredModel:
    """One model's evaluation: the training seed it came from (None: the untuned base), its report and where."""

    seed: int | None
    report: dict[str, Any]
    prefix: str
    reused: bool


def _score_model(
    context: dg.AssetExecutionContext,
    store: Store,
    evaluation_config: EvaluationResource,
    launcher: EvaluationLauncher,
    model_url: str,
    model_name: str,
    seed: int | None,
) -> ScoredModel:
    """``model_url`` scored on the latest prompt set in its own process, or its report reused when the same
    model was scored on the same prompts with the same settings."""
    if not store.exists(LATEST_TEST_PROMPTS_KEY):
        raise dg.Failure("no test prompt set yet: materialize test_prompts first")
    prompts = store.read_json(LATEST_TEST_PROMPTS_KEY)
    config = evaluation_config.run_config(
        model_url=model_url, prompts_url=store.uri(prompts["key"]), store_url=store.url, output_url=""
    ).to_dict()
    # the base model is named by a digest of its hub id or folder: the same name is taken for the same weights
    prefix = evaluation_prefix(model_name, prompts["version"], _settings_digest(config))
    config["output_url"] = store.uri(prefix)
    report_key = f"{prefix}/{EVALUATION_REPORT_FILE}"
    reused = store.exists(report_key)
    if reused:
        context.log.info(f"{prefix} already holds this model's report on this prompt set: reusing it")
    else:
        context.log.info(f"scoring {model_url}" + ("" if seed is None else f" (training seed {seed})"))
        launcher.launch(context, config, store)
    return ScoredModel(seed, store.read_json(report_key), prefix, reused)


def trained_models(unet: dict[str, Any]) -> list[tuple[int, str]]:
    """(training seed, model URL) of each seed's model in ``daring_unet``'s metadata; a materialization from
    before replicates names one model, its ``output_url`` (seed 0)."""
    models = unet.get("models")
    if isinstance(models, dg.TableMetadataValue):
        return [(int(cast(int, r.data["seed"])), str(r.data["output_url"])) for r in models.records]
    return [(0, str(unet["output_url"]))]


@dg.asset(
    deps=["daring_unet", "test_prompts", "eval_set"],
    partitions_def=training_variants,
    kinds={"pytorch"},
    group_name="evaluation",
    code_version="3",
    automation_condition=on_new_data_version_of("daring_unet"),
    pool=EVALUATION_POOL,
    op_tags=launcher_step_tags(),
)
def evaluation(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    evaluation_config: EvaluationResource,
    evaluation_launcher: EvaluationLauncher,
) -> dg.MaterializeResult:
    """One image per test prompt from each of this variant's models (one per training seed), scored in its
    own process (``python -m cosmicman.evaluation``): semantic accuracy (Acc_obj / tex / shape / all, DSG-style
    questions answered by a judge configured apart from the annotator), FID and KID against the real I_e
    images, CLIPScore and HPSv2. Each figure is the mean over the seeds, ``<figure>_sd`` its spread (with two
    seeds or more), ``by_seed`` each seed's; the samples are the first seed's. The same scorers on the real
    images give the ceiling. A model already scored on the same prompt set with the same settings is not
    scored again."""
    store = object_store.store()
    unet = latest_metadata(context.instance, "daring_unet", context.partition_key)
    if not unet.get("output_url") or not unet.get("dataset_version"):
        raise dg.Failure(
            f"daring_unet[{context.partition_key}] has no materialization with an output_url and dataset_version"
        )
    scored = [
        _score_model(
            context, store, evaluation_config, evaluation_launcher, url, url.rstrip("/").rsplit("/", 1)[-1], seed
        )
        for seed, url in trained_models(unet)
    ]
    first = scored[0]
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **report_metadata(store, first.report, context.partition_key),
                **seed_means(scored, context.partition_key),
                "variant": context.partition_key,
                # what evaluation_not_worse_than_previous_version compares across (cosmicman.assets.evaluation_checks)
                "dataset_version": unet["dataset_version"],
                "model": location(first.report["model_url"]),
                "report": location(store.uri(f"{first.prefix}/{EVALUATION_REPORT_FILE}")),
                "reused": all(s.reused for s in scored),
            }
        ),
        data_version=dg.DataVersion(
            first.prefix
            if len(scored) == 1
            else "seeds-" + hashlib.sha256("\n".join(s.prefix for s in scored).encode()).hexdigest()[:12]
        ),
    )


def seed_means(scored: list[ScoredModel], variant: str) -> dict[str, Any]:
    """The figures over a variant's seeds: each metric's mean (its own name, so every reader of one model's
    figures reads the replicated one), ``<metric>_sd`` with two seeds or more, the per-seed table, and the
    metric table and accuracy chart redrawn with the means."""
    per_seed = [s.report["metrics"] for s in scored]
    means = over_seeds(per_seed, list(per_seed[0]))
    ceiling = scored[0].report["ceiling"]
    shown = [k for k in ABLATION_METRICS if k in per_seed[0]]
    return {
        **{k: v for k, v in means.items() if v is not None},
        "seeds": [s.seed for s in scored],
        "by_seed": table(
            [{"seed": s.seed, **{k: m.get(k) for k in shown}} for s, m in zip(scored, per_seed)],
            columns=["seed", *shown],
        ),
        "metrics": table(
            [
                {
                    "metric": k,
                    "generated": means[k],
                    "sd": means.get(k + SD_SUFFIX),
                    "real_images": ceiling.get(k),
                    "note": METRIC_NOTES.get(k, ""),
                }
                for k in per_seed[0]
                if k in means
            ],
            columns=["metric", "generated", "sd", "real_images", "note"],
            descriptions={"generated": "mean over training seeds", "sd": "spread over training seeds (sample sd)"},
        ),
        "accuracy_chart": bar_chart(
            {k: float(means[k] or 0.0) for k in ACCURACIES},
            title=f"{variant}: semantic accuracy (mean over {len(scored)} seed{'s' if len(scored) > 1 else ''})",
            references={k: ceiling[k] for k in ACCURACIES},
            reference_label="real images",
        ),
    }


def base_evaluation_due() -> dg.AutomationCondition:
    """New test prompts, or never evaluated; in a run of its own once the prompts and I_e are materialized,
    never in the setup run that makes them: that run gates the labelling rounds, and an evaluation takes
    minutes on the CPU."""
    deps_materialized = ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.missing())
    return ((on_new_data_version_of("test_prompts") | on_missing()) & deps_materialized).with_label(
        "new test prompts, or never evaluated"
    )


@dg.asset(
    deps=["test_prompts", "eval_set"],
    kinds={"pytorch"},
    group_name="evaluation",
    code_version="1",
    automation_condition=base_evaluation_due(),
    pool=EVALUATION_POOL,
    op_tags=launcher_step_tags(),
)
def base_model_evaluation(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    training: TrainingResource,
    evaluation_config: EvaluationResource,
    evaluation_launcher: EvaluationLauncher,
) -> dg.MaterializeResult:
    """The untuned base model that Daring fine-tunes (``TrainingResource``'s ``pretrained``), scored as
    ``evaluation`` scores each variant, on the same prompts with the same settings and launcher: the ablation
    table's row for what fine-tuning adds."""
    pretrained = training.pretrained_model()
    if pretrained is None:
        raise dg.Failure(
            f"the training recipe {training.recipe!r} names no pretrained model (it builds tiny components from "
            "configs), so there is no base model to evaluate: set training overrides pretrained to a diffusers folder"
        )
    store = object_store.store()
    name = "base-" + hashlib.sha256(pretrained.encode()).hexdigest()[:10]
    scored = _score_model(context, store, evaluation_config, evaluation_launcher, pretrained, name, None)
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **report_metadata(store, scored.report, BASE_ROW),
                "pretrained": location(pretrained),
                "report": location(store.uri(f"{scored.prefix}/{EVALUATION_REPORT_FILE}")),
                "reused": scored.reused,
            }
        ),
        data_version=dg.DataVersion(scored.prefix),
    )


def once_evaluations_settle() -> dg.AutomationCondition:
    """Once after a wave of evaluations settles, as ``once_deps_settle``; the base model's evaluation, which
    runs as soon as the test prompts exist, counts only once some variant has been evaluated (a table of the
    base alone would be a failed run, then a second table)."""
    some_variant_evaluated = dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing()).allow(
        dg.AssetSelection.assets("evaluation")
    )
    return (once_deps_settle() & some_variant_evaluated).with_label("evaluations updated and settled")


@dg.asset(
    deps=["evaluation", "base_model_evaluation"],
    kinds={"python"},
    group_name="evaluation",
    code_version="2",
    automation_condition=once_evaluations_settle(),
)
def ablation_table(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every evaluated variant side by side, each figure the mean over its training seeds with its spread
    (``*_sd``), its training loss and attention in the masks, the untuned base model as the row
    "base (no fine-tune)", and HOLA's attention gain over the noise-only baseline, paired by seed: Daring's
    and Prime's ablation."""
    rows: list[dict[str, Any]] = []
    by_group: dict[str, dg.TableMetadataValue] = {}
    models: dict[str, list[dict[str, Any]]] = {}
    chance = None
    for variant in VARIANTS:
        ev = latest_metadata(context.instance, "evaluation", variant)
        if not ev:
            continue
        unet = latest_metadata(context.instance, "daring_unet", variant)
        if isinstance(unet.get("attention_in_mask_by_group"), dg.TableMetadataValue):
            by_group[variant] = unet["attention_in_mask_by_group"]
        models[variant] = (
            [dict(r.data) for r in unet["models"].records]
            if isinstance(unet.get("models"), dg.TableMetadataValue)
            else [{"seed": 0, "attention_in_mask": unet.get("attention_in_mask")}]
        )
        chance = unet.get("attention_in_mask_chance", chance)
        rows.append(
            {
                "variant": variant,
                "seeds": len(ev.get("seeds") or [0]),
                **{k: ev.get(k) for k in (*ABLATION_METRICS, *(m + SD_SUFFIX for m in ABLATION_METRICS))},
                **{k: unet.get(k) for k in ("loss_last", "loss_last_sd", "attention_in_mask", "attention_in_mask_sd")},
                "ceiling_acc_all": ev.get("ceiling_acc_all"),
            }
        )
    if not rows:
        raise dg.Failure("no variant has been evaluated yet: materialize evaluation partitions first")
    base = latest_metadata(context.instance, "base_model_evaluation")
    base_rows = [{"variant": BASE_ROW, **{k: base.get(k) for k in ABLATION_METRICS}}] if base else []
    gain = paired_gain(
        seed_figures(models.get("hola", []), "attention_in_mask"),
        seed_figures(models.get("baseline", []), "attention_in_mask"),
    )
    ceilings = {r["variant"]: r["ceiling_acc_all"] for r in rows if r["ceiling_acc_all"] is not None}
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "variants": len(rows),
                **_gain_metadata(gain, chance),
                **(
                    {"base_model": "evaluated (row: " + BASE_ROW + ")"}
                    if base
                    else {"base_model": "not evaluated yet: materialize base_model_evaluation for its row"}
                ),
                # three narrow tables rather than one wide one: each fits the asset page's value column
                "table": table(
                    base_rows + rows,
                    columns=["variant", "seeds", "acc_obj", "acc_tex", "acc_shape", "acc_all", "acc_all_sd"],
                    descriptions={
                        "seeds": "training seeds averaged over (each figure is their mean)",
                        "acc_all_sd": "spread over training seeds (sample sd; empty for one seed)",
                    },
                ),
                "fidelity_and_training": table(
                    [
                        {
                            "variant": r["variant"],
                            "fd": r["frechet_distance"],
                            "fd_sd": r.get("frechet_distance_sd"),
                            "kid": r["kid"],
                            "clip_score": r["clip_score"],
                            "hpsv2": r["hpsv2"],
                            "loss_last": r.get("loss_last"),
                            "attn_in_mask": r.get("attention_in_mask"),
                            "attn_in_mask_sd": r.get("attention_in_mask_sd"),
                        }
                        for r in base_rows + rows
                    ],
                    columns=[
                        "variant",
                        "fd",
                        "fd_sd",
                        "kid",
                        "clip_score",
                        "hpsv2",
                        "loss_last",
                        "attn_in_mask",
                        "attn_in_mask_sd",
                    ],
                    descriptions={
                        "fd": "Frechet distance to real I_e images (lower is better)",
                        "kid": "kernel inception distance to real I_e images (lower is better)",
                        "attn_in_mask": "share of each caption group's cross-attention inside its parsing mask",
                    },
                ),
                "spread": table(
                    [{"variant": r["variant"], **{k: r.get(k) for k in SPREAD_COLUMNS}} for r in rows],
                    columns=["variant", *SPREAD_COLUMNS],
                    descriptions={"acc_obj_sd": "sample sd over training seeds, as every *_sd (empty for one seed)"},
                ),
                # per caption group (means over seeds), chance beside each variant: where HOLA moves attention
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
                    {r["variant"]: r["acc_all"] for r in base_rows + rows},
                    title="acc_all per variant (mean over seeds)",
                    references=ceilings,
                    reference_label="real images",
                ),
                "frechet_distance_chart": bar_chart(
                    {r["variant"]: r["frechet_distance"] for r in base_rows + rows},
                    title="Frechet distance (lower is better)",
                ),
            }
        )
    )


SPREAD_COLUMNS = [
    "acc_obj_sd",
    "acc_tex_sd",
    "acc_shape_sd",
    "kid_sd",
    "clip_score_sd",
    "hpsv2_sd",
    "loss_last_sd",
]


def _gain_metadata(gain: PairedGain | None, chance: Any) -> dict[str, Any]:
    """HOLA's attention gain over the noise-only baseline (share of attention inside the masks, paired by
    training seed), with its spread and what it compares; the reason when it cannot be measured."""
    if gain is None:
        return {
            "hola_attention_gain_note": "not measured: needs the baseline and hola variants trained on a common "
            "seed with attention measured (alignment_batches > 0)"
        }
    return {
        "hola_attention_gain": gain.gain,
        **({"hola_attention_gain_sd": gain.gain_sd} if gain.gain_sd is not None else {}),
        "hola_attention_gain_seeds": len(gain.seeds),
        "hola_attention_in_mask": gain.treated,
        "baseline_attention_in_mask": gain.control,
        **({"attention_in_mask_chance": chance} if isinstance(chance, int | float) else {}),
    }
