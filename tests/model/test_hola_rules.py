"""HOLA's input rules: span edges, the map grid, mask resizing, the key columns, and the errors a trainer
reads when the captured maps, masks and spans do not fit together."""

import pytest
import torch

from cosmicman.model.hola import hola_loss, resize_masks, span_token_columns, span_weights
from tests.support.hola_reference import hola_loss_reference


def _maps(B: int, heads: int, P: int, K: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, heads, P, K, generator=g).softmax(-1)


def _masks(B: int, G: int, H: int, W: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, G, H, W, generator=g) > 0.5).float()


SPANS = torch.tensor([[[1, 3], [3, 4]], [[0, 2], [-1, -1]]])


# ------------------------------------------------------------------------------------------ spans
def test_span_edges():
    w = span_weights(torch.tensor([[[0, 2], [-1, 3], [2, 2], [4, 5]]]), 5)
    assert w.tolist() == [[[1, 1, 0, 0, 0], [0] * 5, [0] * 5, [0, 0, 0, 0, 1]]]  # BOS may start; -1 never does
    assert span_weights(torch.tensor([[[78, 78]]]), 77).sum() == 0  # an empty span is no span, wherever it is
    assert span_weights(torch.tensor([[[76, 77]]]), 77)[0, 0, 76] == 1  # ends at the last token
    with pytest.raises(ValueError, match=r"a span ends past the 77 text tokens: \[\[\[70, 78\]\]\]"):
        span_weights(torch.tensor([[[70, 78]]]), 77)


def test_span_token_columns_of_a_batch_without_groups():
    assert span_token_columns(torch.zeros((2, 0, 2), dtype=torch.long), 77) == ()
    assert span_token_columns(SPANS, 5) == (0, 1, 2, 3)


# ------------------------------------------------------------------------------------------ masks
def test_resize_masks_defaults_to_area():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :3] = 1
    assert torch.equal(resize_masks(m, (2, 2)), resize_masks(m, (2, 2), "area"))
    assert resize_masks(m, (4, 4), "nearest").dtype == torch.float32  # at the map size: only made float
    with pytest.raises(ValueError, match=r"mask_resize must be one of \('area', 'nearest'\), got 'bilinear'"):
        resize_masks(m, (2, 2), "bilinear")


def test_nearest_samples_the_cell_centres():
    m = torch.tensor([[1.0, 0.0, 0.0, 1.0]]).expand(4, 4)[None, None]  # columns 1 0 0 1
    # nearest-exact samples columns 1 and 3 (the centres of 2-wide cells); plain nearest would take 0 and 2
    assert resize_masks(m, (2, 2), "nearest")[0, 0].tolist() == [[0.0, 1.0], [0.0, 1.0]]


@pytest.mark.parametrize("mode", ["area", "nearest"])
def test_the_loss_resizes_the_masks_as_asked(mode):
    maps, masks = _maps(2, 2, 4, 6), _masks(2, 2, 4, 4)
    loss = hola_loss([maps], masks, SPANS, mask_resize=mode, map_hw=(2, 2))
    other = hola_loss([maps], masks, SPANS, mask_resize="nearest" if mode == "area" else "area", map_hw=(2, 2))
    reference = hola_loss_reference([maps], masks, SPANS, mask_resize=mode, map_hw=(2, 2))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert loss.item() != pytest.approx(other.item(), rel=1e-3)


# ------------------------------------------------------------------------------------------ the map grid
def test_the_grid_is_inferred_from_the_masks_aspect_ratio():
    maps, masks = _maps(2, 2, 8, 6), _masks(2, 2, 16, 8)
    inferred = hola_loss([maps], masks, SPANS)
    assert inferred.item() == pytest.approx(hola_loss([maps], masks, SPANS, map_hw=(4, 2)).item(), rel=1e-6)
    assert inferred.item() == pytest.approx(hola_loss_reference([maps], masks, SPANS, map_hw=(4, 2)).item(), rel=1e-5)


def test_a_given_grid_wins_over_the_masks_shape():
    maps, masks = _maps(2, 1, 16, 6), _masks(2, 2, 8, 8)
    given = hola_loss([maps], masks, SPANS, map_hw=(2, 8))
    assert given.item() == pytest.approx(hola_loss_reference([maps], masks, SPANS, map_hw=(2, 8)).item(), rel=1e-5)
    assert given.item() != pytest.approx(hola_loss([maps], masks, SPANS, map_hw=(4, 4)).item(), rel=1e-3)
    with pytest.raises(ValueError, match="cannot infer a map grid of 16 cells for masks of 8x4"):
        hola_loss([maps], _masks(2, 2, 8, 4), SPANS, map_hw=(4, 8))
    with pytest.raises(ValueError, match="cannot infer a map grid of 15 cells for masks of 3x5"):
        hola_loss([_maps(2, 1, 15, 6)], _masks(2, 2, 3, 5), SPANS, map_hw=(4, 4))


# ------------------------------------------------------------------------------------------ layers
def test_two_layers_both_count():
    a, b = _maps(2, 2, 4, 6, seed=2), _maps(2, 1, 4, 6, seed=3)
    masks = _masks(2, 2, 2, 2)
    for reduction in ("paper", "released"):
        both = hola_loss({"a": a, "b": b}, masks, SPANS, reduction=reduction)
        reference = hola_loss_reference({"a": a, "b": b}, masks, SPANS, reduction=reduction)
        assert both.item() == pytest.approx(reference.item(), rel=1e-5)
        assert both.item() != pytest.approx(hola_loss({"a": a}, masks, SPANS, reduction=reduction).item(), rel=1e-3)


def test_what_does_not_fit_together_is_named():
    masks = _masks(2, 2, 2, 2)
    maps = _maps(2, 1, 4, 6)
    with pytest.raises(ValueError, match=r"reduction must be one of \('paper', 'released'\), got 'mean'"):
        hola_loss([maps], masks, SPANS, reduction="mean")
    with pytest.raises(
        ValueError, match="^no attention maps captured: check the HOLA map size against the UNet's levels$"
    ):
        hola_loss({}, masks, SPANS)
    with pytest.raises(ValueError, match=r"masks \(2, 3, 2, 2\) / spans \(2, 2, 2\) / maps batch 2 disagree"):
        hola_loss([maps], _masks(2, 3, 2, 2), SPANS)
    with pytest.raises(ValueError, match=r"masks \(3, 2, 2, 2\) / spans \(3, 2, 2\) / maps batch 2 disagree"):
        hola_loss([maps], _masks(3, 2, 2, 2), torch.cat([SPANS, SPANS[:1]]))
    for other in (_maps(3, 1, 4, 6), _maps(2, 1, 9, 6), _maps(2, 1, 4, 7)):  # batch, pixels, keys
        with pytest.raises(ValueError, match=r"captured maps have mixed shapes: .* vs \(2, '\*', 4, 6\)"):
            hola_loss([maps, other], masks, SPANS)


# ------------------------------------------------------------------------------------------ key columns
def test_token_columns_must_ascend_one_by_one():
    maps, masks = _maps(2, 1, 4, 3), _masks(2, 2, 2, 2)
    spans = torch.tensor([[[1, 2], [-1, -1]], [[2, 4], [-1, -1]]])
    assert hola_loss([maps], masks, spans, token_columns=(1, 2, 3)).item() > 0
    for columns in ((1, 3, 2), (1, 1, 2)):
        with pytest.raises(ValueError, match=r"token columns must be ascending without repeats: \(1, \d, \d\)"):
            hola_loss([maps], masks, spans, token_columns=columns)


def test_a_span_past_the_last_column_is_not_among_them():
    maps, masks = _maps(2, 1, 4, 2), _masks(2, 2, 2, 2)
    spans = torch.tensor([[[1, 4], [-1, -1]], [[-1, -1], [-1, -1]]])
    with pytest.raises(ValueError, match=r"a span token is not among the captured columns \(1, 2\)"):
        hola_loss([maps], masks, spans, token_columns=(1, 2))


def test_no_groups_and_no_columns_give_zero():
    masks = torch.ones(2, 0, 2, 2)
    spans = torch.zeros((2, 0, 2), dtype=torch.long)
    assert hola_loss([torch.rand(2, 1, 4, 0)], masks, spans, token_columns=()).item() == 0.0
