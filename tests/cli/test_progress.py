"""What the turn's console says, from the instance's records: the stage, the progress line, a failure in one
line."""

from types import SimpleNamespace

from dagster import DagsterRunStatus
from dagster._core.scheduler.instigation import TickStatus
from dagster._utils.error import SerializableErrorInfo

from cosmicman.cli.progress import STAGES, Coverage, TurnState, observe, progress_line, root_error_line


def _state(**coverage: Coverage) -> TurnState:
    everything = {asset: Coverage(1, 1) for _, assets in STAGES for asset in assets}
    return TurnState(runs=[], in_flight=0, coverage={**everything, **coverage}, quiet=False)


def test_the_stage_is_the_first_with_an_asset_still_missing():
    assert _state().stage == (8, "ablation")
    assert _state(daring_unet=Coverage(2, 3)).stage == (6, "training")
    # an earlier stage incomplete again (a new labelling round) is where the flywheel is
    assert _state(daring_unet=Coverage(0, 3), annotator=Coverage(1, 2)).stage == (3, "labelling rounds")
    assert not Coverage(0, 0).complete and Coverage(3, 3).complete and not Coverage(2, 3).complete


def test_the_progress_line_counts_batches_rounds_and_variants():
    state = _state(
        human_parsing=Coverage(3, 3), annotator=Coverage(2, 2), daring_unet=Coverage(1, 7), evaluation=Coverage(0, 7)
    )
    line = progress_line(state, 102.0)
    assert line.startswith("[stage 6/8 training] 1m42s · 3 batches sourced · 2 rounds · ")
    assert "variants trained 1/7, evaluated 0/7" in line


def test_a_failure_reads_as_the_error_that_started_it():
    user = SerializableErrorInfo("builtins.RuntimeError: boom always fails\nmore\n", [], "RuntimeError")
    wrapped = SerializableErrorInfo(
        'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op "boom":\n',
        [],
        "DagsterExecutionStepExecutionError",
        cause=user,
    )
    assert root_error_line(wrapped) == "RuntimeError: boom always fails"


class RunEndingWhileObserved:
    """An instance with one run of the turn that ends the moment the first read of runs returns, and one sensor
    whose latest tick (asking for nothing) came while that run ran: what the daemon leaves on a busy machine."""

    def __init__(self, started: float) -> None:
        self.status, self.end_time = DagsterRunStatus.STARTED, None
        self.ended_at = started + 10
        self.tick = SimpleNamespace(
            status=TickStatus.SKIPPED, timestamp=started + 5, run_ids=[], skip_reason="nothing new", error=None
        )

    def get_run_records(self, filters):
        record = SimpleNamespace(dagster_run=SimpleNamespace(status=self.status), end_time=self.end_time)
        mine = [record] if not filters.statuses or self.status in filters.statuses else []
        self.status, self.end_time = DagsterRunStatus.SUCCESS, self.ended_at
        return mine

    def all_instigator_state(self, **_):
        return [SimpleNamespace(instigator_name="pool_threshold_sensor", instigator_origin_id="o", selector_id="s")]

    def get_ticks(self, *_, **__):
        return [self.tick]


def test_quiet_is_never_judged_on_a_run_that_ended_between_two_reads():
    started = 1000.0
    instance = RunEndingWhileObserved(started)
    # the run was in flight when the look began: not quiet, though it has ended by the time the ticks are read
    assert observe(instance, {}, {"pool_threshold_sensor"}, started).quiet is False
    # the next look sees it ended after the sensor's latest tick: not quiet until a tick comes after its end
    assert observe(instance, {}, {"pool_threshold_sensor"}, started).quiet is False
    instance.tick = SimpleNamespace(**{**vars(instance.tick), "timestamp": instance.ended_at + 1})
    assert observe(instance, {}, {"pool_threshold_sensor"}, started).quiet is True
