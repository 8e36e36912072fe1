"""Stored label maps: values checked once, where they are written; the header read alone where they are used."""

import numpy as np
import pytest

from cosmicman.core.masks import N_ATR_LABELS, mask_png, mask_png_size, read_mask


def test_mask_png_round_trips_and_its_header_gives_width_then_height():
    mask = np.arange(35, dtype=np.uint8).reshape(7, 5) % N_ATR_LABELS
    data = mask_png(mask)
    assert mask_png_size(data) == (5, 7)
    assert (read_mask(data) == mask).all()


def test_mask_png_takes_the_last_label_and_refuses_the_next():
    assert read_mask(mask_png(np.full((2, 2), N_ATR_LABELS - 1))).max() == 17
    with pytest.raises(ValueError, match="values must be in 0..17"):
        mask_png(np.full((2, 2), N_ATR_LABELS))
    with pytest.raises(ValueError, match="values must be in 0..17"):
        mask_png(np.full((2, 2), -1))
    with pytest.raises(ValueError, match="2-D"):
        mask_png(np.zeros((2, 2, 3)))


def test_mask_png_size_refuses_what_is_not_an_8_bit_grayscale_png():
    from io import BytesIO

    from PIL import Image

    rgb = BytesIO()
    Image.new("RGB", (4, 3)).save(rgb, format="PNG")
    with pytest.raises(ValueError, match="colour type 2"):
        mask_png_size(rgb.getvalue())
    with pytest.raises(ValueError, match="not a PNG"):
        mask_png_size(b"\xff\xd8\xff" + bytes(40))
    with pytest.raises(ValueError, match="not a PNG"):
        mask_png_size(mask_png(np.zeros((2, 2)))[:20])
