"""The automation sensor that evaluates every asset's automation condition (``cosmicman.assets.automation``)."""

import warnings

import dagster as dg

from cosmicman.environments.settings import sensor_interval_s

# Evaluated in the user code server: the dataset's condition counts newly annotated images with Python of our
# own, which needs use_user_code_server, a beta parameter; chosen knowingly, so its notice is not repeated.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    flywheel_automation = dg.AutomationConditionSensorDefinition(
        "flywheel_automation",
        target=dg.AssetSelection.all(),
        use_user_code_server=True,
        minimum_interval_seconds=sensor_interval_s(),
        default_status=dg.DefaultSensorStatus.STOPPED,
        # one run per partition (a trained variant, an evaluation), not a backfill: each shows on its own
        emit_backfills=False,
        description="Materializes what waits only on other assets: the models and sets built once, a dataset "
        "version when enough newly annotated images arrived, evaluation of a new model, the ablation table once the "
        "evaluations settle. (training_job's own condition, on a new dataset version, is Dagster's "
        "default_automation_condition_sensor's.)",
    )
