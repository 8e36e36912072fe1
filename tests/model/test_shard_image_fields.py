"""The trainer's shard reader takes an image under every extension the pool stores one under."""

from cosmicman.core.imageio import FORMAT_EXTENSIONS
from cosmicman.model.shards import IMAGE_FIELDS


def test_every_pool_format_is_a_training_image_field() -> None:
    # a pool image stored as .gif or .tif (folder sources decode them) must not fail training as "lacks image"
    missing = set(FORMAT_EXTENSIONS.values()) - set(IMAGE_FIELDS)
    assert not missing, f"training would reject pool images stored as {sorted(missing)}"
