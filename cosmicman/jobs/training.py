"""Dataset versions, training, evaluation and the ablation table."""

import dagster as dg

dataset_job = dg.define_asset_job(
    "dataset_job",
    selection=dg.AssetSelection.assets("cosmicman_hq"),
    description="Version the captioned, parsed, annotated pool as a new CosmicMan-HQ dataset (or reuse the latest).",
)
training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("daring_unet"),
    description="Train one Daring UNet variant (a partition) on the latest dataset version, in its own process.",
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
