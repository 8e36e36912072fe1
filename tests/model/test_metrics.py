"""Semantic accuracy by hand (the Fréchet distance and features moved to tests/evaluation/)."""

from __future__ import annotations

import pytest

from cosmicman.core.protocol import load_protocol
from cosmicman.model.metrics import semantic_accuracy, semantic_accuracy_details


def test_semantic_accuracy_hand_made_case():
    proto = load_protocol()
    truth = [
        # prompt 1: 6 questions: global x2 (gender, age), obj x2, tex x1, shape x1
        {
            "gender": "woman",
            "age": "adult",
            "hat_exists": "yes",
            "hat_color": "red",
            "hat_type": "cap",
            "bag_exists": "no",
        },
        # prompt 2: 3 questions: obj, tex, shape
        {"top_exists": "yes", "top_color": "blue", "sleeve_length": "long"},
    ]
    pred = [
        # gender right, age wrong, hat_exists right, hat_color right, hat_type wrong, bag_exists right
        {
            "gender": "woman",
            "age": "elderly",
            "hat_exists": "yes",
            "hat_color": "red",
            "hat_type": "beanie",
            "bag_exists": "no",
        },
        # the VQA says there is no top: top_exists wrong; colour/sleeve answered right but their parent
        # failed, so DSG's dependency rule marks them wrong too
        {"top_exists": "no", "top_color": "blue", "sleeve_length": "long"},
    ]
    acc = semantic_accuracy(pred, truth, proto)
    assert set(acc) == {"acc_obj", "acc_tex", "acc_shape", "acc_all"}
    assert acc["acc_obj"] == pytest.approx(2 / 3)  # hat yes, bag no | top wrong
    assert acc["acc_tex"] == pytest.approx(1 / 2)  # hat red | top blue (parent failed)
    assert acc["acc_shape"] == pytest.approx(0 / 2)  # cap wrong | sleeve (parent failed)
    assert acc["acc_all"] == pytest.approx(4 / 9)  # gender, hat_exists, hat_color, bag_exists
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    # without the dependency rule the two children of prompt 2 count as right
    loose = semantic_accuracy(pred, truth, proto, dependency=False)
    assert loose["acc_tex"] == 1.0 and loose["acc_shape"] == pytest.approx(1 / 2)
    assert loose["acc_all"] == pytest.approx(6 / 9)
    counts = semantic_accuracy_details(pred, truth, proto)
    assert counts["global"] == {"correct": 1, "total": 2}
    # perfect answers -> 1.0 everywhere; a missing answer is wrong
    assert set(semantic_accuracy(truth, truth, proto).values()) == {1.0}
    assert semantic_accuracy([{}, {}], truth, proto)["acc_all"] == 0.0
    with pytest.raises(ValueError):
        semantic_accuracy(pred[:1], truth, proto)
