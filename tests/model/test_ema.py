"""The EMA's warm-up and cap, against diffusers' EMAModel defaults (what the released code used)."""

import pytest
import torch
from diffusers.training_utils import EMAModel

from cosmicman.model.train.ema import EMA


def test_decay_schedule_matches_diffusers_from_the_first_step_to_the_cap():
    decay = 0.999
    ema = EMA([torch.zeros(1)], decay)
    reference = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=decay)
    for step in range(1, 3000):
        ema.optimization_step = step
        assert ema.current_decay() == pytest.approx(reference.get_decay(step)), step
    ema.optimization_step = 1
    assert ema.current_decay() == 0.0  # the first step copies the weights
    ema.optimization_step = 2
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.optimization_step = 10**6
    assert ema.current_decay() == decay


def test_first_step_copies_the_weights_and_the_second_averages():
    weights = torch.tensor([1.0, 2.0])
    ema = EMA([torch.zeros(2)], 0.9999)
    ema.step([weights])
    assert torch.equal(ema.shadow[0], weights)
    ema.step([torch.tensor([12.0, 2.0])])
    # decay 2/11 at step 2: shadow = 2/11 * 1 + 9/11 * 12
    assert torch.allclose(ema.shadow[0], torch.tensor([2 / 11 + 108 / 11, 2.0]))


def test_state_round_trip_and_a_mismatched_state_is_refused():
    ema = EMA([torch.zeros(2)], 0.99)
    ema.step([torch.ones(2)])
    restored = EMA([torch.zeros(2)], 0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.optimization_step == 1 and torch.equal(restored.shadow[0], torch.ones(2))
    copy = torch.zeros(2, dtype=torch.float16)
    restored.copy_to([copy])
    assert torch.equal(copy, torch.ones(2, dtype=torch.float16))
    assert ema.state_dict()["decay"] == 0.99  # the checkpoint format resume reads back
    assert set(ema.state_dict()) == {"decay", "optimization_step", "shadow"}
    with pytest.raises(ValueError, match="^EMA state does not match the model's parameters$"):
        EMA([torch.zeros(2), torch.zeros(1)], 0.99).load_state_dict(ema.state_dict())
