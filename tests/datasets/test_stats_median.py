"""A version's medians come from value counts gathered piece by piece, never from the rows held at once."""

from collections import Counter

import polars as pl
import pytest

from cosmicman.datasets.stats import _Tally


@pytest.mark.parametrize(
    ("pieces", "median"),
    [
        ([[5]], 5.0),
        ([[1], [9]], 5.0),  # an even count: the mean of the two middle values
        ([[3, 1], [2]], 2.0),
        ([[1, 1], [2, 100]], 1.5),
        ([[7, None], [7, 8]], 7.0),  # nulls are not values
        ([[None]], None),
    ],
)
def test_the_median_from_counts_is_polars_median_of_all_pieces(pieces, median):
    tally = _Tally()
    for piece in pieces:
        tally.for_median["width"].update(Counter(v for v in piece if v is not None))
    assert tally.median("width") == median
    everything = pl.Series([v for piece in pieces for v in piece], dtype=pl.Int64)
    assert tally.median("width") == everything.median()
