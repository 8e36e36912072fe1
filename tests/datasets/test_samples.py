"""A sample's content key, computed row by row and for a whole table at once, and a stored mask that goes into
a shard as it is."""

import io

import numpy as np
import polars as pl
import pytest
from PIL import Image

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.masks import mask_png
from cosmicman.datasets.samples import DatasetSample, content_key, content_keys
from cosmicman.datasets.shards import member_parts


def test_content_keys_of_a_table_equal_content_key_row_by_row_for_every_column_type():
    # stored versions hold keys computed row by row: a different key would rewrite every sample
    table = pl.DataFrame(
        {
            "sha256": ["ab" * 32, "cd" * 32, "ef" * 32],
            "filter_config": [None, '{"a": 1}', "ünïcode"],
            "annotator_round": [1, None, -3],
            "kept": [True, False, None],
            "score": [0.5, 1e20, None],
            "rounds": [[1, 2], [], None],
            "labels": [{"top": "red"}, {"top": None}, None],
        }
    )
    expected = [content_key(*row) for row in table.iter_rows()]
    assert content_keys(table).to_list() == expected
    assert content_keys(table.head(0)).to_list() == []


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_stored_mask_goes_into_the_shard_as_it_is_and_its_size_must_match_the_image():
    image = _png(5, 3)
    labels = np.arange(15, dtype=np.uint8).reshape(3, 5)
    stored = mask_png(labels)
    as_array = DatasetSample(sha256_hex(image), image, "png", labels, {}, {"caption": "x"})
    as_stored = DatasetSample(sha256_hex(image), image, "png", stored, {}, {"caption": "x"})
    assert member_parts(as_stored) == member_parts(as_array)  # the same shard bytes either way
    assert dict(member_parts(as_stored)[0])[f"{as_stored.sha256}.mask.png"] is stored
    turned = DatasetSample(sha256_hex(image), image, "png", mask_png(labels.T), {}, {"caption": "x"})
    with pytest.raises(ValueError, match=r"mask shape \(5, 3\) != image \(h, w\) \(3, 5\)"):
        member_parts(turned)
