"""Fixtures shared by test modules."""

import pytest

from tests.support.daemon_turn import turned_flywheel  # noqa: F401  (the slow tests' shared daemon turn)


@pytest.fixture(scope="module")
def mixed_urls(tmp_path_factory):
    """Two shards of people in mixed aspect ratios (tests/model/test_buckets.MIXED), for bucketed reading."""
    from tests.model.test_buckets import write_mixed_shards

    return write_mixed_shards(tmp_path_factory.mktemp("mixed"), 2)
