"""Annotate Anyone's human-in-the-loop round: accuracy maths, the simulated human, one real round.

Rendered people are cached per module (530 small synthetic 'kept' people, 160x320 pixels).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
from PIL import Image

from cosmicman.annotation.accuracy import (
    categories_below,
    full_manual_label_count,
    mean_accuracy,
    per_category_accuracy,
)
from cosmicman.annotation.annotator import Annotator, load_annotator
from cosmicman.annotation.items import AnnotationItem, LabelRecord
from cosmicman.annotation.loop import LoopState, run_hitl_round
from cosmicman.annotation.probe_annotator import ProbeAnnotator
from cosmicman.annotation.rounds import AnnotatorInForce, HitlRules, RoundPlan, close_round, select_round_sample
from cosmicman.core.protocol import load_protocol
from cosmicman.core.workers import WORKERS_ENV
from cosmicman.simulation.oracle import SimulatedOracle
from cosmicman.simulation.pretraining import pretrained_probe
from cosmicman.simulation.world import SyntheticWorld

PROTO = load_protocol()
N_PRETRAIN, N_CLEAN, N_EVAL, N_POOL, ROUND_SAMPLE = 120, 300, 80, 150, 48


# ------------------------------------------------------------------------------------------------
# hand-made cases
# ------------------------------------------------------------------------------------------------
class _FixedAnnotator:
    """Answers from a table keyed by image size (the hand-made images differ in width)."""

    version = "fixed-0"

    def __init__(self, table):
        self.table = table

    def predict(self, images, categories):
        return [{k: v for k, v in self.table[img.width].items() if k in categories} for img in images]

    def finetune(self, labels, images):
        return self

    def save(self, path=None):
        return b""


def _item(i, attrs):
    return AnnotationItem(f"sha{i}", Image.new("RGB", (10 + i, 20)), attrs)


def test_per_category_accuracy_hand_made():
    items = [
        _item(0, {"gender": "man", "hat_exists": "yes", "hat_color": "red"}),
        _item(1, {"gender": "woman", "hat_exists": "yes", "hat_color": "blue"}),
        _item(2, {"gender": "woman", "hat_exists": "no"}),
        _item(3, {"gender": "man", "hat_exists": "no"}),
    ]
    ann = _FixedAnnotator(
        {
            10: {"gender": "man", "hat_exists": "yes", "hat_color": "red"},  # all right
            11: {"gender": "man", "hat_exists": "no"},  # gender wrong; missed the hat
            12: {"gender": "woman", "hat_exists": "yes", "hat_color": "red"},  # hat wrong (colour not scored)
            13: {"gender": "man", "hat_exists": "no"},  # all right
        }
    )
    assert isinstance(ann, Annotator)
    acc = per_category_accuracy(ann, items, ["gender", "hat_exists", "hat_color", "bag_exists"], PROTO)
    # gender 3/4; hat_exists 2/4; hat_color applies to items 0 and 1 by truth: 0 right, 1 missing -> 1/2;
    # bag_exists applies to no item -> left out
    assert acc == {"gender": 0.75, "hat_exists": 0.5, "hat_color": 0.5}
    assert mean_accuracy(acc) == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert categories_below(acc, 0.85) == ["hat_color", "hat_exists", "gender"]
    assert categories_below(acc, 0.5) == []
    assert full_manual_label_count([i.attributes for i in items], PROTO) == sum(
        len(PROTO.applicable(i.attributes)) for i in items
    )


def test_select_round_sample_deterministic_and_order_free():
    ids = [f"img{i:03d}" for i in range(50)]
    a = select_round_sample(ids, 10, seed=3)
    assert len(a) == len(set(a)) == 10 and set(a) <= set(ids)
    assert a == select_round_sample(list(reversed(ids)), 10, seed=3)
    assert a != select_round_sample(ids, 10, seed=4)
    assert select_round_sample(ids, 100, seed=3) == select_round_sample(ids, 50, seed=3)


def test_oracle_error_rate_matches_configuration():
    attrs = {"gender": "woman", "top_exists": "yes", "top_color": "red", "hat_exists": "no"}
    for rate in (0.0, 0.2):
        oracle = SimulatedOracle(error_rate=rate, seed=11)
        answers = [oracle.answer(f"img{i}", attrs, "top_color", round=1) for i in range(5000)]
        wrong = [a for a in answers if a != "red"]
        assert all(a in PROTO.by_name["top_color"].answers for a in answers)
        assert len(wrong) / len(answers) == pytest.approx(rate, abs=0.015)
        if rate:
            # wrong answers are spread over the other 11 colours
            assert len(set(wrong)) == 11
    oracle = SimulatedOracle(error_rate=0.2, seed=11)
    assert oracle.answer("x", attrs, "hat_color") is None  # no hat: the question is not asked
    assert oracle.answer("x", attrs, "top_color", 2) == oracle.answer("x", attrs, "top_color", 2)
    labels = oracle.label([AnnotationItem("x", Image.new("RGB", (4, 4)), attrs)], ["top_color", "hat_color"], 2)
    assert [(lab.category, lab.source, lab.round) for lab in labels] == [("top_color", "oracle", 2)]
    with pytest.raises(ValueError):
        SimulatedOracle(error_rate=1.5)


def test_should_stop_rule():
    def res(before, after):
        plan = RoundPlan(
            1, AnnotatorInForce("a", "a.zip"), before, tuple(categories_below(before, 0.85)), (), 100, 0.85
        )
        return close_round(plan, AnnotatorInForce("b", "b.zip"), after, 10, HitlRules())

    assert (lambda r: (r.stop, r.stop_reason))(res({"x": 0.5}, {"x": 0.9})) == (True, "all pass")
    assert (lambda r: (r.stop, r.stop_reason))(res({"x": 0.5}, {"x": 0.7})) == (False, "continue")
    assert (lambda r: (r.stop, r.stop_reason))(res({"x": 0.5}, {"x": 0.5})) == (True, "no gain")
    r = res({"x": 0.5, "y": 0.9}, {"x": 0.7, "y": 0.9})
    assert r.cost_share == 0.1 and r.gain == pytest.approx(0.1) and r.to_json()["categories_sent"] == ["x"]


# ------------------------------------------------------------------------------------------------
# one real round on rendered people
# ------------------------------------------------------------------------------------------------
@functools.cache
def _people():
    t0 = time.perf_counter()
    pre_world, eval_world, pool_world = (SyntheticWorld(seed=s, width=160, height=320) for s in (101, 202, 303))
    pre = [pre_world.sample(i, case="kept") for i in range(N_CLEAN)]
    ev = [AnnotationItem.from_sample(eval_world.sample(i, case="kept")) for i in range(N_EVAL)]
    pool = [AnnotationItem.from_sample(pool_world.sample(i, case="kept")) for i in range(N_POOL)]
    print(f"\nrendered {N_CLEAN + N_EVAL + N_POOL} people in {time.perf_counter() - t0:.1f}s")
    return pre, ev, pool


@functools.cache
def _round0():
    pre, _, _ = _people()
    pre = pre[:N_PRETRAIN]
    return pretrained_probe([s.image_bytes for s in pre], [s.attributes for s in pre], seed=5)


def test_probe_learns_from_clean_labels():
    pre, ev, _ = _people()
    t0 = time.perf_counter()
    ann = ProbeAnnotator.train([s.image_bytes for s in pre], [s.attributes for s in pre])
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = per_category_accuracy(ann, ev)
    t_pred = (time.perf_counter() - t0) / len(ev)
    print(
        f"\nclean ({N_CLEAN} labels): mean {mean_accuracy(acc):.3f}; train {t_train:.1f}s, "
        f"predict {1000 * t_pred:.1f} ms/image\n" + " ".join(f"{k} {v:.2f}" for k, v in acc.items())
    )
    # 70 categories (small accessories and their colours are the hard tail): about 0.66 here
    assert mean_accuracy(acc) >= 0.63
    for c in ("pose", "background", "lighting", "top_color", "pants_color", "top_pattern", "legs_exposed"):
        assert acc[c] >= 0.8, c


@functools.cache
def _round1():
    _, ev, pool = _people()
    a0 = _round0()
    oracle = SimulatedOracle(error_rate=0.05, seed=7)
    # the threshold from round 1 (not the paper's all-categories first round): what this round measures
    rules = HitlRules(sample_size=ROUND_SAMPLE, seed=0, first_round="below_threshold")
    return run_hitl_round(LoopState(a0), 1, ev, pool, oracle, rules)


def test_round0_probe_has_a_long_tail():
    _, ev, _ = _people()
    acc = per_category_accuracy(_round0(), ev)
    assert len(acc) >= 35
    below = categories_below(acc, 0.85)
    vals = np.array(sorted(acc.values()))
    print(
        f"\nround 0: mean {vals.mean():.3f}, best {vals[-1]:.2f}, worst {vals[0]:.2f}, "
        f"{len(below)}/{len(acc)} categories < 0.85; head: "
        + ", ".join(f"{k} {acc[k]:.2f}" for k in sorted(acc, key=acc.get, reverse=True)[:5])
    )
    assert below, "a generic pretrained annotator must fail some categories"
    assert vals[-1] >= 0.85 and vals[0] <= 0.3  # head categories pass, the tail is far below
    assert vals[-1] - vals[0] >= 0.6
    # the head of the distribution holds head categories (whole-person / big-garment questions)
    head = sorted(acc, key=acc.get, reverse=True)[:8]
    assert {PROTO.by_name[c].tag for c in head} & {"global", "obj"}


def test_one_hitl_round_raises_accuracy_with_few_labels():
    new, res, labels = _round1()
    print(
        f"\nround 1: mean accuracy {res.mean_accuracy_before:.3f} -> {res.mean_accuracy_after:.3f} "
        f"(+{100 * res.gain:.1f} points) on {N_EVAL} held-out people; {len(res.categories_sent)} categories "
        f"sent; labels asked {res.labels_asked} vs full manual pass {res.full_manual_labels} "
        f"({100 * res.cost_share:.1f}%)"
    )
    assert res.categories_sent and len(res.sampled_ids) == ROUND_SAMPLE
    asked = [lab for lab in labels if lab.source != "implied"]
    assert res.labels_asked == len(asked) > 0 and len(labels) > len(asked)
    assert {lab.category for lab in asked} <= set(res.categories_sent)
    assert all(lab.image_sha256 in res.sampled_ids for lab in labels)
    # 70 categories from 48 images: about +7 points here (the loop's own test runs many rounds)
    assert res.gain >= 0.05, "one round must raise mean accuracy on I_e by a clear margin"
    assert res.cost_share <= 0.35, "a round must ask far fewer labels than a full manual pass"
    sent_before = np.mean([res.accuracy_before[c] for c in res.categories_sent])
    sent_after = np.mean([res.accuracy_after[c] for c in res.categories_sent])
    assert sent_after - sent_before >= 0.05
    # categories neither sent nor implied by the answers (a colour implies its garment) keep their heads
    retrained = set(res.categories_sent) | {lab.category for lab in labels}
    for c in set(res.accuracy_before) - retrained:
        assert res.accuracy_after[c] == res.accuracy_before[c]
    assert new.version == res.annotator_after != res.annotator_before


def test_finetune_returns_new_version_and_leaves_old_unchanged(tmp_path):
    _, ev, _ = _people()
    a0 = _round0()
    v0 = a0.version
    heads0 = {k: v.copy() for k, v in a0.heads.items()}
    imgs = [it.image for it in ev[:8]]
    pred0 = a0.predict(imgs, [c.name for c in PROTO.categories])
    new, res, _ = _round1()
    assert a0.version == v0 and new.version != v0
    assert new.lineage[-1] == v0 and new.round == a0.round + 1
    for k, v in a0.heads.items():
        np.testing.assert_array_equal(v, heads0[k])
        assert not v.flags.writeable
    assert a0.predict(imgs, [c.name for c in PROTO.categories]) == pred0
    changed = [c for c in res.categories_sent if not np.array_equal(new.heads[c], a0.heads[c])]
    assert changed
    # predictions follow the predicted hierarchy
    for p in new.predict(imgs, [c.name for c in PROTO.categories]):
        PROTO.validate_answers(p)
    # save / load round trip
    path = tmp_path / "ann.zip"
    data = new.save(path)
    assert path.read_bytes() == data
    back = load_annotator(path)
    assert back.version == new.version
    assert back.predict(imgs, ["gender", "top_color"]) == new.predict(imgs, ["gender", "top_color"])
    assert ProbeAnnotator.load(data).version == new.version


def test_label_record_and_finetune_needs_images():
    lab = LabelRecord("abc", "gender", "man", "human", 2)
    assert lab.to_dict() == {
        "image_sha256": "abc",
        "category": "gender",
        "answer": "man",
        "source": "human",
        "round": 2,
    }
    with pytest.raises(KeyError):
        _round0().finetune([lab], images={})
    with pytest.raises(ValueError):
        _round0().finetune([LabelRecord("abc", "gender", "robot")], images={"abc": Image.new("RGB", (16, 32))})


def test_heads_do_not_depend_on_the_number_of_worker_processes(monkeypatch):
    pre, ev, _ = _people()
    pre = pre[:N_PRETRAIN]
    annotators = []
    for workers in ("1", "2"):
        monkeypatch.setenv(WORKERS_ENV, workers)
        annotators.append(pretrained_probe([s.image_bytes for s in pre], [s.attributes for s in pre], seed=5))
    assert annotators[0].version == annotators[1].version == _round0().version
    assert per_category_accuracy(annotators[0], ev[:20]) == per_category_accuracy(annotators[1], ev[:20])
