"""Dataset versions, training, evaluation and the ablation table."""

import dagster as dg

dataset_job = dg.define_asset_job("dataset_job", selection=dg.AssetSelection.assets("cosmicman_hq"))
training_job = dg.define_asset_job("training_job", selection=dg.AssetSelection.assets("daring_unet"))
evaluation_job = dg.define_asset_job("evaluation_job", selection=dg.AssetSelection.assets("evaluation"))
ablation_job = dg.define_asset_job("ablation_job", selection=dg.AssetSelection.assets("ablation_table"))
