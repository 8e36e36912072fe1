"""When the later stages run by themselves: the flywheel's automation conditions.

Sensors drive what waits on the world (the pool's threshold, people's labels, the labelling rounds);
everything that only waits on other assets is declared here and evaluated by ``flywheel_automation``
(``cosmicman.jobs.automation``). Each condition fires once per change it waits for, so a turn with
nothing new launches no run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg

ANNOTATIONS = dg.AssetKey("annotations")


def blocking_check_failed_upstream() -> dg.AutomationCondition:
    """A dependency's latest blocking check failed: what it holds must not flow further."""
    return dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.any_checks_match(dg.AutomationCondition.check_failed(), blocking_only=True)
    ).with_label("blocking check failed upstream")


def _settled() -> dg.AutomationCondition:
    """Nothing it reads is missing or being written, and it is not running itself."""
    return (
        ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    )


def on_missing() -> dg.AutomationCondition:
    """While it has never been materialized (a model or set the flywheel builds once), unless its latest run
    failed. Dagster's ``on_missing()`` would not do: it only fires for what goes missing after it is applied."""
    return (
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.execution_failed()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("missing")


def on_new_data_version_of(dep: str) -> dg.AutomationCondition:
    """Each time ``dep`` materializes a new data version (a reused one changes nothing), once ``dep``'s blocking
    checks passed and nothing it reads is being written; or together with ``dep``, in the run that is about to
    make that new version (same partition), where a failing blocking check of ``dep`` stops it in the run."""
    changed = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed() | dg.AutomationCondition.will_be_requested()
    ).allow(dg.AssetSelection.assets(dep))
    return (changed.since_last_handled() & _settled() & ~blocking_check_failed_upstream()).with_label(
        f"new data version of {dep}"
    )


class RequestedThisTick(dg.AutomationCondition):
    """True for what this tick's evaluation already requested, in whatever run: Dagster's ``will_be_requested``
    only counts a dependency that can run in the same run (same partitions)."""

    @property
    def name(self) -> str:
        return "requested_this_tick"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        requested = context.request_subsets_by_key.get(context.key)
        true = context.candidate_subset.compute_intersection(requested) if requested else context.get_empty_subset()
        return dg.AutomationResult(context, true)


def once_deps_settle() -> dg.AutomationCondition:
    """Once after a wave of dependency updates: when a dependency updated and no dependency (nor what feeds
    it) is running, queued or requested this tick, so every partition of a wave counts in one run."""
    busy = dg.AutomationCondition.in_progress() | RequestedThisTick() | dg.AutomationCondition.any_deps_in_progress()
    updated = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated())
    return (
        updated.since_last_handled()
        & ~dg.AutomationCondition.any_deps_match(busy)
        & ~dg.AutomationCondition.in_progress()
    ).with_label("dependencies updated and settled")


@dataclass(frozen=True)
class AnnotatedBatch:
    """What one ``annotations`` materialization reports of its sourcing batch: how many images, labelled by
    which annotator."""

    images: int
    annotator: str


def newly_annotated(now: AnnotatedBatch, at_last_version: AnnotatedBatch | None) -> int:
    """Images of one batch annotated since the pool the last dataset version was built from: every image of a
    batch new since (``at_last_version`` None) or relabelled by a new annotator, otherwise the images it gained."""
    if at_last_version is None or now.annotator != at_last_version.annotator:
        return now.images
    return max(0, now.images - at_last_version.images)


def _annotated_batch(record: dg.EventLogRecord | None) -> AnnotatedBatch | None:
    materialization = record.asset_materialization if record else None
    if materialization is None:
        return None
    metadata = materialization.metadata
    return AnnotatedBatch(int(metadata["images"].value), str(metadata["annotator"].value))  # type: ignore[arg-type]


def _latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, before: int | None = None, partition: str | None = None
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=key, asset_partitions=[partition] if partition else None, before_storage_id=before
        ),
        limit=1,
    ).records
    return records[0] if records else None


# materialization records read per query while counting newly annotated images
RECORDS_PAGE = 200


def _latest_per_batch_since(instance: dg.DagsterInstance, after: int | None) -> Iterator[dg.EventLogRecord]:
    """Each batch's latest ``annotations`` record after storage id ``after`` (all of them when None), newest
    first, read a page at a time as the caller goes: the batches annotated since, never the whole history."""
    seen: set[str | None] = set()
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=ANNOTATIONS, after_storage_id=after), limit=RECORDS_PAGE, cursor=cursor
        )
        for record in page.records:
            if record.partition_key not in seen:
                seen.add(record.partition_key)
                yield record
        if not page.has_more:
            return
        cursor = page.cursor


def count_newly_annotated(instance: dg.DagsterInstance, version: dg.EventLogRecord | None, at_least: int) -> int:
    """Images newly annotated since the dataset ``version`` (every annotated image before the first one), summed
    over the batches annotated since, each against its own latest figures before ``version``. Stops counting
    once ``at_least`` is reached: a relabelled pool is not read batch by batch to say yes."""
    total = 0
    for record in _latest_per_batch_since(instance, version.storage_id if version else None):
        now = _annotated_batch(record)
        then = (
            _annotated_batch(_latest(instance, ANNOTATIONS, before=version.storage_id, partition=record.partition_key))
            if version
            else None
        )
        total += newly_annotated(now, then) if now else 0
        if total >= at_least:
            break
    return total


class NewlyAnnotatedImages(dg.AutomationCondition):
    """True for a dataset built from ``annotations`` once ``min_images`` images were newly annotated since its
    latest materialization (the annotations it was built from are the latest of each batch before it); before
    its first materialization, as soon as an image is annotated. Reads only the instance's materialization
    records: those of the batches annotated since, and each one's latest before the version."""

    def __init__(self, min_images: int) -> None:
        self.min_images = min_images

    @property
    def name(self) -> str:
        return f"newly_annotated_images(>= {self.min_images})"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        if not isinstance(context.key, dg.AssetKey):
            raise TypeError(f"{self.name} applies to an asset, not to {context.key}")
        instance = context.asset_graph_view.instance
        version = _latest(instance, context.key)
        at_least = self.min_images if version else 1
        enough = count_newly_annotated(instance, version, at_least) >= at_least
        return dg.AutomationResult(context, context.candidate_subset if enough else context.get_empty_subset())


def on_newly_annotated_images(min_images: int) -> dg.AutomationCondition:
    """A new dataset version when ``min_images`` images were newly annotated (once per such arrival); the first
    version once an image is annotated and no batch is left unannotated (with no batch at all, an empty pool
    misses nothing: hence the image)."""
    annotated = NewlyAnnotatedImages(min_images)
    first = dg.AutomationCondition.missing() & ~dg.AutomationCondition.execution_failed() & annotated
    arrived = annotated.newly_true().since_last_handled()
    return ((first | arrived) & _settled()).with_label(f"first version, then {min_images} newly annotated images")
