"""Dataset versions, training, evaluation and the ablation table."""

import warnings

import dagster as dg

from cosmicman.assets.automation import on_new_data_version_of

dataset_job = dg.define_asset_job(
    "dataset_job",
    selection=dg.AssetSelection.assets("cosmicman_hq"),
    description="Version the captioned, parsed, annotated pool as a new CosmicMan-HQ dataset (or reuse the latest).",
)
# Training is launched by this job's own automation condition, not by daring_unet's: a run launched for an asset
# belongs to Dagster's implicit asset job, and the Jobs page would show no training run. Job conditions are a
# preview feature, evaluated by the daemon's default automation sensor (every condition here is a built-in one);
# chosen knowingly, so its notice is not repeated.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    training_job = dg.define_asset_job(
        "training_job",
        selection=dg.AssetSelection.assets("daring_unet"),
        description="Train one Daring UNet variant (a partition) on the latest dataset version, in its own process "
        "(with the model's checks). Launched for every variant when a new CosmicMan-HQ version exists.",
        # a failed training is not retried on every tick: it waits for someone to look (a launch by hand clears it)
        automation_condition=dg.AutomationCondition.any_job_root_assets_match(
            on_new_data_version_of("cosmicman_hq") & ~dg.AutomationCondition.execution_failed()
        ),
    )
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    # the model's blocking check runs first in the same run: a model that does not load or has non-finite weights
    # is not evaluated (automation's evaluation runs wait on that check's result instead)
    selection=dg.AssetSelection.assets("evaluation") | dg.AssetSelection.checks_for_assets("daring_unet"),
    description="Evaluate one trained variant: semantic accuracy against the real-image ceiling, Frechet distance "
    "(once its model passed its check: it loads, its weights are finite).",
)
ablation_job = dg.define_asset_job(
    "ablation_job",
    selection=dg.AssetSelection.assets("ablation_table"),
    description="Put every evaluated variant side by side: the ablation table.",
)
