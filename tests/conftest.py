"""Fixtures shared by test modules."""

import pytest
import webdataset as wds

from tests.support.daemon_turn import turned_flywheel  # noqa: F401  (the slow tests' shared daemon turn)


@pytest.fixture(scope="module")
def mixed_urls(tmp_path_factory):
    """Two shards of people in mixed aspect ratios (tests/model/test_buckets.MIXED), for bucketed reading."""
    from tests.model.test_buckets import MIXED, make_rect_sample

    folder = tmp_path_factory.mktemp("mixed")
    urls = []
    for s in range(2):
        path = folder / f"shard-{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i, ((w, h), _) in enumerate(MIXED):
                sink.write(make_rect_sample(100 * s + i, w, h))
        urls.append(str(path))
    return urls
