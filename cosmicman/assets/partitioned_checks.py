"""Asset checks partitioned like their asset: one verdict per sourcing batch or training variant.

Dagster 1.13 marks a check's ``partitions_def`` as a preview and warns each time one is defined. We use it
knowingly: without it a check on a partitioned asset has a single status, so one variant's failed model check
would hold back every variant's evaluation and the next variant's pass would release a broken one. The warning
is silenced here, for these definitions only, so the logs carry no alarm that needs no action.
"""

import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg


def partitioned_asset_check(
    partitions_def: dg.PartitionsDefinition, **kwargs: Any
) -> Callable[[Callable[..., Any]], dg.AssetChecksDefinition]:
    """``dg.asset_check(partitions_def=partitions_def, **kwargs)`` without the preview warning."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return dg.asset_check(partitions_def=partitions_def, **kwargs)(fn)

    return decorate
