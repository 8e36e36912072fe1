"""The offline filter chain on the synthetic world: detector figures, the fake head, exact reasons."""

from __future__ import annotations

import collections
import time

import pytest
from PIL import Image

from cosmicman.core.imageio import decode_image
from cosmicman.filtering.backends import BackendUnavailable
from cosmicman.filtering.chain import FilterChain, local_chain
from cosmicman.filtering.decisions import FilterConfig
from cosmicman.filtering.embedders import ClipImageEmbedder, OfflineImageFeatures
from cosmicman.filtering.face_detector import HaarFaceDetector
from cosmicman.filtering.fake_person import FakePersonClassifier, LogisticHead, train_fake_person_head
from cosmicman.filtering.person_detectors import (
    HogFacePersonDetector,
    HogPersonDetector,
    TransformersPersonDetector,
    evaluate_person_detector,
)
from cosmicman.filtering.quality import OfflineQualityScorer
from cosmicman.simulation.world import SyntheticWorld


def _img(s) -> Image.Image:
    return decode_image(s.image_bytes)


@pytest.fixture(scope="module")
def fake_head():
    """Trained once: real = photographic renders of every kind, fake = cartoon renders (seed 101)."""
    w = SyntheticWorld(seed=101)
    real_cases = ["kept"] * 24 + ["low_quality"] * 12 + ["no_person"] * 8 + ["many_people"] * 8 + ["small_face"] * 8
    images = [_img(w.sample(i, c)) for i, c in enumerate(real_cases)]
    images += [_img(w.sample(1000 + i, "fake_person")) for i in range(60)]
    labels = [0] * len(real_cases) + [1] * 60
    head, metrics = train_fake_person_head(images, labels)
    print(f"fake head: {metrics}")
    return head, metrics


def test_fake_head_accuracy_and_roundtrip(fake_head):
    head, metrics = fake_head
    assert metrics["val_accuracy"] >= 0.95 and metrics["n_val"] == 30
    again = LogisticHead.from_bytes(head.to_bytes())
    w = SyntheticWorld(seed=7)
    for case in ("kept", "fake_person", "low_quality"):
        x = OfflineImageFeatures().embed(_img(w.sample(3, case)))
        assert abs(float(again.prob(x)[0]) - float(head.prob(x)[0])) < 1e-6


@pytest.mark.slow  # a detector-quality figure; each rule's edge is in test_chain_rules.py and test_face_rule.py
def test_detector_precision_recall():
    """30 one-person renders, 20 empty scenes, 20 two-person renders (seed 202, none used for tuning)."""
    w = SyntheticWorld(seed=202)
    kept = [w.sample(i, "kept") for i in range(30)]
    empty = [w.sample(100 + i, "no_person") for i in range(20)]
    two = []
    i = 200
    while len(two) < 20:
        s = w.sample(i, "many_people")
        i += 1
        if s.n_people == 2:
            two.append(s)
    samples = kept + empty + two
    images = [_img(s) for s in samples]
    boxes = [s.person_boxes for s in samples]
    figures = {}
    for name, det in (("hog", HogPersonDetector(min_weight=0.0)), ("hog+face", HogFacePersonDetector())):
        t = time.perf_counter()
        figures[name] = evaluate_person_detector(det, images, boxes)
        figures[name]["ms"] = (time.perf_counter() - t) / len(images) * 1000
    print(f"person detectors: {figures}")
    hf = figures["hog+face"]
    assert hf["precision"] >= 0.97 and hf["recall"] >= 0.95 and hf["count_accuracy"] >= 0.93
    assert figures["hog"]["precision"] >= 0.95 and figures["hog"]["recall"] >= 0.8
    # faces: recall of the main face at >= 48 px on one-person renders, no face on empty scenes
    fd = HaarFaceDetector(min_size=20)
    found = 0
    for s, im in zip(kept, images[:30]):
        fx0, fy0, fx1, fy1 = s.face_bbox
        cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
        hits = [b for b in fd.detect(im) if b[0] <= cx <= b[2] and b[1] <= cy <= b[3] and b[2] - b[0] >= 48]
        found += bool(hits)
    false_faces = sum(len(fd.detect(im)) for im in images[30:50])
    print(f"haar face: recall@48px {found}/30, faces on empty scenes {false_faces}")
    assert found >= 29 and false_faces == 0


@pytest.fixture(scope="module")
def chain(fake_head) -> FilterChain:
    c = local_chain(fake_head[0])
    c.setup()
    return c


def test_chain_rejects_each_case_for_its_reason(chain):
    w = SyntheticWorld(seed=303)
    samples = w.batch(0, 60, negative_fraction=0.3)
    samples += [
        w.sample(1000 + k, c)
        for k, c in enumerate(
            ["corrupt", "too_small", "fake_person", "low_quality", "no_person", "many_people", "small_face"] * 3
        )
    ]
    confusion: collections.Counter = collections.Counter()
    wrong = []
    t = time.perf_counter()
    for s in samples:
        r = chain.process(s.image_bytes)
        confusion[(s.case, r.decision)] += 1
        if r.decision != s.case:
            wrong.append((s.sample_id, s.case, r.decision, r.detail))
        assert r.scores["width"] is not None or r.decision == "corrupt"
    ms = (time.perf_counter() - t) / len(samples) * 1000
    print(f"chain: {len(samples)} samples, {ms:.1f} ms/image; confusion {sorted(confusion.items())}")
    assert not wrong, wrong
    assert confusion[("kept", "kept")] >= 30


def test_chain_keeps_every_score_it_reached(chain):
    w = SyntheticWorld(seed=5)
    r = chain.process(w.sample(0, "kept").image_bytes)
    assert r.decision == "kept"
    for k in (
        "width",
        "height",
        "fake_score",
        "quality",
        "q_sharpness",
        "q_noise",
        "q_luminance",
        "n_people",
        "max_face_px",
    ):
        assert r.scores[k] is not None, k
    r = chain.process(w.sample(0, "fake_person").image_bytes)
    assert r.decision == "fake_person" and r.scores["quality"] is None and r.scores["n_people"] is None
    assert chain.process(b"").decision == "corrupt"


def test_size_rule_reading():
    prod = FilterConfig.production()
    chain = FilterChain(
        prod,
        HogPersonDetector(),
        HaarFaceDetector(),
        FakePersonClassifier(LogisticHead.from_bytes(_const_head())),
        OfflineQualityScorer(),
    )
    for size, ok in (
        ((640, 1280), True),
        ((1280, 640), True),
        ((639, 1280), False),
        ((700, 1200), False),
        ((1000, 1000), False),
    ):
        r = chain.process_image(Image.new("RGB", size, (128, 128, 128)))
        assert (r.decision != "too_small") == ok, (size, r)


def _const_head() -> bytes:
    import numpy as np

    return LogisticHead(np.zeros(10, np.float32), -10.0, np.zeros(10, np.float32), np.ones(10, np.float32)).to_bytes()


def test_production_backends_say_what_they_need(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(BackendUnavailable, match="object-detection weights"):
        TransformersPersonDetector(missing, local_files_only=True).setup()
    with pytest.raises(BackendUnavailable, match="CLIP weights"):
        ClipImageEmbedder(missing, local_files_only=True).setup()
    with pytest.raises(BackendUnavailable, match="no head"):
        FakePersonClassifier(None).setup()
