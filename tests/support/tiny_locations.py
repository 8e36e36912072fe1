"""Two one-asset code locations for the turn's failure paths, each loaded by a workspace file: ``failing``
(its asset raises) and ``sleeping`` (its asset sleeps for ten minutes). Automation materializes the asset
while it is missing, as the flywheel's setup assets."""

import time

import dagster as dg

MISSING = (
    dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.execution_failed()
)


@dg.asset(automation_condition=MISSING)
def boom() -> None:
    raise RuntimeError("boom always fails\nsecond line of the error")


@dg.asset(automation_condition=MISSING)
def sleeper() -> None:
    time.sleep(600)


def _location(asset: dg.AssetsDefinition) -> dg.Definitions:
    automation = dg.AutomationConditionSensorDefinition(
        "automation", target=dg.AssetSelection.all(), minimum_interval_seconds=1
    )
    return dg.Definitions(assets=[asset], sensors=[automation], executor=dg.in_process_executor)


failing = _location(boom)
sleeping = _location(sleeper)
