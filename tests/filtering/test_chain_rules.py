"""The filter chain's rules with stand-in backends (cosmicman.filtering.chain, .decisions): each rule's edge
(at the limit, one step past it), its reason as the reader sees it, the scores an image reached, and the
wiring of the local and production chains. The backends' own figures are in test_filters.py."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cosmicman.core.imageio import ImageDecodeError, decode_image
from cosmicman.filtering.chain import FilterChain, local_chain, production_chain
from cosmicman.filtering.decisions import DECISIONS, FilterConfig, FilterResult
from cosmicman.filtering.embedders import ClipImageEmbedder, OfflineImageFeatures
from cosmicman.filtering.face_detector import HaarFaceDetector
from cosmicman.filtering.fake_person import LogisticHead
from cosmicman.filtering.person_detectors import HogFacePersonDetector, TransformersPersonDetector
from cosmicman.filtering.quality import OfflineQualityScorer

ONE_PERSON = [((0.0, 0.0, 10.0, 10.0), 0.9)]
GOOD_QUALITY = {"quality": 0.8, "sharpness": 0.7, "noise": 0.25}
BIG_FACE = [(10.0, 20.0, 70.0, 50.0)]  # 60 px wide, 30 high


class Stub:
    """A backend that gives the same answer for every image, counts its setups and records the sizes of
    the images it was shown."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.setups = 0
        self.seen: list[tuple[int, int]] = []

    def setup(self) -> None:
        self.setups += 1

    def detect(self, img):
        self.seen.append(img.size)
        return self.answer

    def score(self, img):
        self.seen.append(img.size)
        return self.answer


def _stub(answer: Any) -> Any:
    return Stub(answer)


def _chain(fake=0.1, quality=None, people=None, faces=None, config=None) -> FilterChain:
    return FilterChain(
        config or FilterConfig(),
        person_detector=_stub(ONE_PERSON if people is None else people),
        face_detector=_stub(BIG_FACE if faces is None else faces),
        fake_person_classifier=_stub(fake),
        quality_scorer=_stub(GOOD_QUALITY if quality is None else quality),
    )


def _decide(chain: FilterChain, size=(256, 512)) -> FilterResult:
    return chain.process_image(Image.new("RGB", size))


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def test_decisions_and_thresholds():
    assert DECISIONS == (
        "kept",
        "corrupt",
        "too_small",
        "fake_person",
        "low_quality",
        "no_person",
        "many_people",
        "small_face",
    )
    local = FilterConfig()
    assert (local.min_short_side, local.min_long_side, local.min_face_px) == (256, 512, 52)
    assert (local.max_fake_score, local.min_quality, local.max_people) == (0.5, 0.5, 1)
    assert FilterConfig.production() == FilterConfig(640, 1280, 224, 0.5, 0.5, 1)
    assert FilterResult("kept", {}).detail == "" and FilterResult("kept", {}).kept
    assert not FilterResult("small_face", {}, "x").kept


def test_a_kept_image_carries_every_score_it_reached():
    chain = _chain()
    r = chain.process(_png((256, 512)))
    assert (r.decision, r.detail, r.kept) == ("kept", "", True)
    assert r.scores == {
        "width": 256.0,
        "height": 512.0,
        "fake_score": 0.1,
        "quality": 0.8,
        "n_people": 1.0,
        "max_face_px": 60.0,
        "q_sharpness": 0.7,
        "q_noise": 0.25,
        "person_conf": 0.9,
        "n_faces": 1.0,
    }
    assert _decide(chain).scores == r.scores  # without process(): the same scores, none left unset
    backends = [chain.fake_person_classifier, chain.quality_scorer, chain.person_detector, chain.face_detector]
    assert [b.seen for b in backends] == [[(256, 512)] * 2] * 4  # every backend saw the image, once a call


def test_process_reports_the_scores_an_image_did_not_reach_as_unset():
    r = _chain(fake=0.9).process(_png((256, 512)))
    assert r.decision == "fake_person"
    assert r.scores == {
        "width": 256.0,
        "height": 512.0,
        "fake_score": 0.9,
        "quality": None,
        "n_people": None,
        "max_face_px": None,
    }


def test_corrupt_bytes_keep_every_score_unset_and_say_why():
    chain = _chain()
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(b"not an image at all")
    r = chain.process(b"not an image at all")
    assert (r.decision, r.detail) == ("corrupt", str(exc.value))
    assert r.scores == dict.fromkeys(("width", "height", "fake_score", "quality", "n_people", "max_face_px"))
    assert chain.fake_person_classifier.seen == []


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ((256, 512), True),
        ((512, 256), True),  # landscape: the short and long sides, not width and height
        ((255, 512), False),
        ((512, 255), False),
        ((256, 511), False),
        ((511, 256), False),
        ((400, 400), False),
    ],
)
def test_size_rule_at_its_edges(size, ok):
    r = _decide(_chain(), size)
    assert (r.decision == "kept") == ok and (r.decision == "too_small") != ok


def test_size_reason_and_scores():
    chain = _chain()
    r = _decide(chain, (511, 255))
    assert r.detail == "511x255: short side 255 (min 256), long side 511 (min 512)"
    assert r.scores == {"width": 511.0, "height": 255.0}
    assert chain.fake_person_classifier.seen == []


def test_fake_score_at_the_limit_passes_just_over_fails():
    assert _decide(_chain(fake=0.5)).decision == "kept"
    over = _decide(_chain(fake=math.nextafter(0.5, 1.0)))
    assert over.decision == "fake_person" and over.detail == "P(fake)=0.500 > 0.5"
    r = _decide(_chain(fake=0.75))
    assert r.detail == "P(fake)=0.750 > 0.5"
    assert r.scores == {"width": 256.0, "height": 512.0, "fake_score": 0.75}


def test_quality_at_the_limit_passes_just_under_fails():
    assert _decide(_chain(quality={"quality": 0.5})).decision == "kept"
    under = _decide(_chain(quality={"quality": math.nextafter(0.5, 0.0)}))
    assert under.decision == "low_quality" and under.detail == "quality 0.500 < 0.5"
    r = _decide(_chain(quality={"quality": 0.25, "sharpness": 0.5}))
    assert r.detail == "quality 0.250 < 0.5"
    assert r.scores == {"width": 256.0, "height": 512.0, "fake_score": 0.1, "quality": 0.25, "q_sharpness": 0.5}


def test_exactly_one_person():
    none = _decide(_chain(people=[]))
    assert (none.decision, none.detail) == ("no_person", "no person detected")
    assert (none.scores["n_people"], none.scores["person_conf"]) == (0.0, 0.0) and "n_faces" not in none.scores
    two = _decide(_chain(people=[((0, 0, 5, 5), 0.6), ((5, 5, 9, 9), 0.8)]))
    assert (two.decision, two.detail) == ("many_people", "2 people detected")
    assert (two.scores["n_people"], two.scores["person_conf"]) == (2.0, 0.8) and "n_faces" not in two.scores
    assert _decide(_chain(people=ONE_PERSON[:1] * 2, config=FilterConfig(max_people=2))).decision == "kept"
    assert _decide(_chain(people=ONE_PERSON * 3, config=FilterConfig(max_people=2))).decision == "many_people"


@pytest.mark.parametrize(
    "box",
    [(10.0, 20.0, 62.0, 46.0), (30.0, 40.0, 56.0, 92.0)],  # the longer side: width; height
)
def test_the_face_rule_reads_the_longer_side_of_the_box(box):
    assert _decide(_chain(faces=[box])).decision == "kept"
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    smaller = (x0, y0, x1 - 1, y1) if w > h else (x0, y0, x1, y1 - 1)
    r = _decide(_chain(faces=[(0.0, 0.0, 5.0, 5.0), smaller]))
    assert (r.decision, r.detail) == ("small_face", "largest face 51px < 52px")
    assert (r.scores["n_faces"], r.scores["max_face_px"]) == (2.0, 51.0)


def test_no_face_is_a_small_face():
    r = _decide(_chain(faces=[]))
    assert (r.decision, r.detail) == ("small_face", "largest face 0px < 52px")
    assert (r.scores["n_faces"], r.scores["max_face_px"]) == (0.0, 0.0)


def test_models_load_once_per_chain():
    chain = _chain()
    backends = [chain.fake_person_classifier, chain.quality_scorer, chain.person_detector, chain.face_detector]
    chain.process(_png((256, 512)))
    _decide(chain)
    chain.setup()
    assert [b.setups for b in backends] == [1, 1, 1, 1]


def _head() -> LogisticHead:
    return LogisticHead(np.zeros(3, np.float32), 0.0, np.zeros(3, np.float32), np.ones(3, np.float32))


def test_local_chain_shares_one_face_detector():
    head = _head()
    chain = local_chain(head)
    assert chain.config == FilterConfig()
    assert isinstance(chain.person_detector, HogFacePersonDetector)
    assert isinstance(chain.face_detector, HaarFaceDetector) and chain.face_detector.min_size == 20
    assert chain.person_detector.faces is chain.face_detector
    assert chain.fake_person_classifier.head is head
    assert isinstance(chain.fake_person_classifier.embedder, OfflineImageFeatures)
    assert isinstance(chain.quality_scorer, OfflineQualityScorer)
    faces, quality, config = HaarFaceDetector(min_size=33), Stub(GOOD_QUALITY), FilterConfig(min_face_px=40)
    given = local_chain(head, config, face_detector=faces, quality_scorer=quality)
    assert given.config is config and given.face_detector is faces and given.quality_scorer is quality
    assert given.person_detector.faces is faces


def test_production_chain_wiring():
    head = _head()
    chain = production_chain(head)
    assert chain.config == FilterConfig.production()
    det = chain.person_detector
    assert isinstance(det, TransformersPersonDetector)
    assert (det.model_id, det.local_files_only, det.device) == ("PekingU/rtdetr_r50vd_coco_o365", False, "cpu")
    assert isinstance(chain.face_detector, HaarFaceDetector) and chain.face_detector.min_size == 64
    emb = chain.fake_person_classifier.embedder
    assert chain.fake_person_classifier.head is head and isinstance(emb, ClipImageEmbedder)
    assert (emb.model_id, emb.local_files_only, emb.device) == ("openai/clip-vit-large-patch14", False, "cpu")
    assert isinstance(chain.quality_scorer, OfflineQualityScorer)
    faces, quality = Stub([]), Stub(GOOD_QUALITY)
    given = production_chain(
        head,
        detector_id="det",
        clip_id="clip",
        local_files_only=True,
        device="cuda:1",
        face_detector=faces,
        quality_scorer=quality,
    )
    det, emb = given.person_detector, given.fake_person_classifier.embedder
    assert (det.model_id, det.local_files_only, det.device) == ("det", True, "cuda:1")
    assert (emb.model_id, emb.local_files_only, emb.device) == ("clip", True, "cuda:1")
    assert given.face_detector is faces and given.quality_scorer is quality
