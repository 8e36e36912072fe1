"""Checks on the filter chain's output: each filter's rejection share of a batch within its bounds."""

import dagster as dg
import pydantic

from cosmicman.assets.common import sourcing_batches
from cosmicman.assets.metadata import table
from cosmicman.assets.partitioned_checks import partitioned_asset_check
from cosmicman.core.keys import table_key
from cosmicman.filtering.rejection_bounds import (
    DEFAULT_MAX_SHARE,
    DEFAULT_MIN_IMAGES,
    out_of_bounds,
    rejection_bounds,
    stage_shares,
)
from cosmicman.resources.storage import ObjectStoreResource


class RejectionBoundsConfig(dg.Config):
    """Bounds of the rejection shares, per filter (``decode``, ``size``, ``fake_person``, ``quality``,
    ``person_count``, ``face_size``); a filter not named keeps its default (floor 0, ceiling below)."""

    min_share: dict[str, float] = pydantic.Field(
        default={}, description="the least share of what reaches a filter it must reject"
    )
    max_share: dict[str, float] = pydantic.Field(
        default={}, description=f"the most share of what reaches a filter it may reject (defaults: {DEFAULT_MAX_SHARE})"
    )
    min_images: int = pydantic.Field(
        default=DEFAULT_MIN_IMAGES, description="a filter reached by fewer images is reported, not judged"
    )


@partitioned_asset_check(
    sourcing_batches,
    asset="filtered_images",
    description="Each filter rejects a share of the images that reach it within its bounds "
    "(cosmicman.filtering.rejection_bounds says why the defaults); a share out of bounds points at a broken "
    "detector, a drifted threshold or a source serving something else.",
)
def rejection_shares_within_bounds(
    context: dg.AssetCheckExecutionContext, config: RejectionBoundsConfig, object_store: ObjectStoreResource
) -> dg.AssetCheckResult:
    batch = context.partition_key
    decisions = object_store.store().read_table(table_key("filtered_images", batch), columns=["decision"])
    counts = {str(d): int(n) for d, n in decisions.group_by("decision").len().iter_rows()}
    shares = stage_shares(counts, rejection_bounds(config.min_share, config.max_share), config.min_images)
    problems = out_of_bounds(shares)
    unjudged = [s.stage for s in shares if not s.judged]
    verdict = f"every filter within its bounds on {len(decisions)} images"
    if unjudged:
        verdict += f" ({', '.join(unjudged)} reached by under {config.min_images} images: not judged)"
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or verdict,
        metadata={
            "shares": table(
                [
                    {
                        "filter": s.stage,
                        "reached": s.reached,
                        "rejected": s.rejected,
                        "share": s.share,
                        "min_share": s.bounds.min_share,
                        "max_share": s.bounds.max_share,
                        "judged": s.judged,
                        "within": s.within,
                    }
                    for s in shares
                ],
                descriptions={
                    "reached": "images the filter saw (the ones every filter before it kept)",
                    "share": "rejected / reached",
                    "judged": f"reached by at least {config.min_images} images",
                },
            ),
            **{f"share_{s.stage}": dg.MetadataValue.float(round(s.share, 4)) for s in shares},
            "out_of_bounds": len(problems),
        },
    )
