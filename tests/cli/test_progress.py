"""What the turn's console says, from the instance's records: the stage, the progress line, a failure in one
line."""

from dagster._utils.error import SerializableErrorInfo

from cosmicman.cli.progress import STAGES, Coverage, TurnState, progress_line, root_error_line


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
