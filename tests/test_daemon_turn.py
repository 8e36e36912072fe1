"""The flywheel turns through Dagster's daemon: every run is the code location's and was launched by a sensor
or by automation, the sensors have tick history, every asset is materialized, and a second turn (every sensor
turned off and on again in between) launches no run."""

import dagster as dg
import pytest
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import TickStatus

from tests.support.daemon_turn import LOCATION, VARIANTS

pytestmark = pytest.mark.slow
SENSORS = {"pool_threshold_sensor", "labels_arrived_sensor", "hitl_round_sensor"}
AUTOMATION = "flywheel_automation"
# Dagster's own automation sensor, evaluated by the daemon: it launches training_job by the job's condition
JOB_AUTOMATION = "default_automation_condition_sensor"


@pytest.fixture(scope="module")
def instance(turned_flywheel):
    with dg.DagsterInstance.from_config(str(turned_flywheel["home"] / "dagster")) as inst:
        yield inst


def _ticks(instance, name):
    (state,) = [
        s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == name
    ]
    return instance.get_ticks(state.instigator_origin_id, state.selector_id)


def test_every_run_is_the_code_locations_and_launched_by_a_sensor_or_automation(instance):
    runs = instance.get_runs()
    assert runs
    for run in runs:
        assert run.remote_job_origin is not None, run.run_id
        assert run.remote_job_origin.location_name == LOCATION
        assert run.tags.get("dagster/sensor_name") in SENSORS | {AUTOMATION, JOB_AUTOMATION}, (run.job_name, run.tags)
        if run.tags["dagster/sensor_name"] in (AUTOMATION, JOB_AUTOMATION):
            assert run.tags.get("dagster/from_automation_condition") == "true"
    by_job = {}
    for run in runs:
        by_job.setdefault(run.job_name, []).append(run)
    # the sensors' jobs ran under their own names; automation's runs are its asset runs
    assert {"pool_job", "annotation_round_job", "labels_job", "annotations_job"} <= set(by_job)
    # one training_job run per variant, each once, launched by the job's own condition (the Jobs page shows them)
    training = by_job["training_job"]
    assert sorted(r.tags["dagster/partition"] for r in training) == sorted(VARIANTS)
    assert {r.tags["dagster/sensor_name"] for r in training} == {JOB_AUTOMATION}
    # and one evaluation per variant, by the asset's condition once its model's checks passed
    evaluated = sorted(
        r.tags["dagster/partition"] for r in runs if dg.AssetKey("evaluation") in (r.asset_selection or ())
    )
    assert evaluated == sorted(VARIANTS)


def test_the_pool_sensor_and_automation_have_tick_history(instance):
    pool = _ticks(instance, "pool_threshold_sensor")
    assert sum(bool(t.run_ids) for t in pool) >= 2 and any(t.status == TickStatus.SKIPPED for t in pool)
    automation = _ticks(instance, AUTOMATION)
    requested = [
        sorted(str(k) for k in instance.get_run_by_id(i).asset_selection or ()) for t in automation for i in t.run_ids
    ]
    # the setup assets, the untuned base model's evaluation (a run of its own), the dataset version, one
    # evaluation per variant, the ablation table
    assert len(requested) == 1 + 1 + 1 + len(VARIANTS) + 1, requested
    assert [str(dg.AssetKey("base_model_evaluation"))] in requested
    assert sum(len(t.run_ids) for t in _ticks(instance, JOB_AUTOMATION)) == len(VARIANTS)
    for name in SENSORS:
        assert _ticks(instance, name), name


def test_every_asset_of_the_graph_is_materialized_once_per_partition(instance):
    from tests.support.small_flywheel import defs

    graph = defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        partitions_def = graph.get(key).partitions_def
        if partitions_def is None:
            count = len(instance.fetch_materializations(key, limit=10).records)
            assert count == 1, (key, count)  # the ablation table once for all variants, not once per variant
        else:
            keys = set(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
            assert keys and instance.get_materialized_partitions(key) == keys, key
    assert set(graph.get(dg.AssetKey("daring_unet")).partitions_def.get_partition_keys()) == set(VARIANTS)


def test_a_second_turn_launches_no_run(turned_flywheel, instance):
    assert turned_flywheel["sensors_turned_off"] == len(SENSORS) + 2
    assert turned_flywheel["second"]["runs"] == {"launched": 0, "by": {}}
    assert {r.run_id for r in instance.get_runs()} == turned_flywheel["runs_first"]
    # every sensor, turned on again by the second turn, ticked and asked for nothing new
    last_run_end = max(r.end_time for r in instance.get_run_records())
    for name in SENSORS | {AUTOMATION, JOB_AUTOMATION}:
        latest = _ticks(instance, name)[0]
        assert latest.timestamp > last_run_end and not latest.run_ids, name


def test_each_sensor_asks_again_only_for_run_keys_that_already_ran(turned_flywheel, instance):
    """What the daemon would do on a tick now: every run request repeats a run key its sensor already ran."""
    from tests.support.small_flywheel import defs

    for sensor in defs.sensors:
        if sensor.name == AUTOMATION:
            continue
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
            result = sensor(ctx)
        for request in result.run_requests or []:
            ran = instance.get_runs(
                dg.RunsFilter(tags={"dagster/run_key": request.run_key, "dagster/sensor_name": sensor.name})
            )
            assert len(ran) == 1, (sensor.name, request.run_key)
