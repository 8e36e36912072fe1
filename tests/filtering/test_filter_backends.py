"""Filter backends: wheel-shipped detectors on real photographs, the Human-Art folder reader and the
head trained from it, and the production quality scorers' wiring (stand-in packages, clear errors)."""

from __future__ import annotations

import sys
import types
import uuid

import numpy as np
import pytest
import skimage.data
from PIL import Image

from cosmicman.core.imageio import decode_image, encode_jpeg
from cosmicman.core.store import Store
from cosmicman.environments.simulated_data import SimulatedFilterResource
from cosmicman.filtering.backends import BackendUnavailable
from cosmicman.filtering.boxes import Box
from cosmicman.filtering.embedders import ClipImageEmbedder, OfflineImageFeatures
from cosmicman.filtering.face_detector import HaarFaceDetector
from cosmicman.filtering.fake_person import LogisticHead, train_fake_person_head_from_folder
from cosmicman.filtering.humanart import HumanArtFolder
from cosmicman.filtering.person_detectors import HogFacePersonDetector
from cosmicman.filtering.quality import HpsV2Scorer, OfflineQualityScorer, PyiqaQualityScorer
from cosmicman.resources.filters import FAKE_HEAD_KEY, FilterResource
from cosmicman.simulation.world import SyntheticWorld


def _photo(name: str) -> Image.Image:
    """scikit-image's photo as the chain sees a record: JPEG bytes decoded to RGB."""
    return decode_image(encode_jpeg(Image.fromarray(getattr(skimage.data, name)())))


def _side(box: Box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


# the centre of each photo's face, read off the image by eye
FACE_POINT = {"astronaut": (225, 115), "camera": (215, 145)}


@pytest.mark.parametrize("name, face_px", [("astronaut", 98), ("camera", 124)])
def test_local_detectors_find_one_person_and_one_face_on_photos(name, face_px):
    img = _photo(name)
    faces = HaarFaceDetector(min_size=20)  # the local chain's detector, shared by both steps
    people = HogFacePersonDetector(faces=faces)
    people.setup()
    found_people, found_faces = people.detect(img), faces.detect(img)
    print(f"{name}: people {found_people}, faces {found_faces}")
    assert len(found_people) == 1 and len(found_faces) == 1
    ((x0, y0, x1, y1),) = found_faces
    px, py = FACE_POINT[name]
    assert x0 <= px <= x1 and y0 <= py <= y1
    assert _side(found_faces[0]) == pytest.approx(face_px, abs=4)


def test_profile_pass_is_what_finds_the_camera_man():
    img = _photo("camera")
    assert HaarFaceDetector(min_size=20, profile_cascade=None).detect(img) == []
    assert len(HaarFaceDetector(min_size=20).detect(img)) == 1
    # the astronaut's frontal face is found first, so the profile pass never runs there
    astronaut = _photo("astronaut")
    assert HaarFaceDetector(min_size=20).detect(astronaut) == HaarFaceDetector(
        min_size=20, profile_cascade=None
    ).detect(astronaut)


def test_cascades_are_config():
    with pytest.raises(BackendUnavailable, match="no-such-cascade.xml"):
        HaarFaceDetector(cascade="no-such-cascade.xml").setup()
    import cv2

    by_path = HaarFaceDetector(cascade=cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml", min_size=20)
    assert len(by_path.detect(_photo("astronaut"))) == 1


# ------------------------------------------------------------------------------ Human-Art folders


def _write(fs_root: str, rel: str, data: bytes) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(fs_root)
    fs.makedirs(f"{root}/{rel.rsplit('/', 1)[0]}", exist_ok=True)
    fs.pipe_file(f"{root}/{rel}", data)


def _tiny_jpeg(v: int) -> bytes:
    return encode_jpeg(Image.new("RGB", (32, 32), (v, v, v)))


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_humanart_reader_labels_by_tree(tmp_path, scheme):
    root = str(tmp_path / "HumanArt") if scheme == "local" else f"memory://humanart-{uuid.uuid4().hex}"
    for rel in (
        "images/real_human/dance/000000000001.jpg",
        "images/real_human/movie/sub/000000000002.png",
        "images/2D_virtual_human/cartoon/000000000003.jpg",
        "images/3D_virtual_human/sculpture/000000000004.jpg",
        # ignored: not under a scenario, not an image, hidden, outside the three groups
        "images/real_human/loose.jpg",
        "images/real_human/dance/notes.txt",
        "images/real_human/dance/.tmp-000000000005.jpg",
        "images/other/x/000000000006.jpg",
        "annotations/training_humanart.json",
    ):
        _write(root, rel, _tiny_jpeg(100))
    for url in (root, root + "/images"):  # the dataset root or its images folder
        entries = HumanArtFolder(url).entries()
        got = sorted((e.group, e.scenario, e.label, e.path.rsplit("/", 1)[1]) for e in entries)
        assert got == [
            ("2D_virtual_human", "cartoon", 1, "000000000003.jpg"),
            ("3D_virtual_human", "sculpture", 1, "000000000004.jpg"),
            ("real_human", "dance", 0, "000000000001.jpg"),
            ("real_human", "movie", 0, "000000000002.png"),
        ]
        assert HumanArtFolder(url).read_bytes(entries[0]) == _tiny_jpeg(100)
    with pytest.raises(FileNotFoundError, match="Human-Art layout"):
        HumanArtFolder(str(tmp_path)).entries()


def test_head_trains_from_a_humanart_folder_with_per_group_accuracy(tmp_path):
    world = SyntheticWorld(seed=606)
    layout = [
        ("real_human", "kept", "kept", 10),
        ("real_human", "no_person", "no_person", 6),
        ("2D_virtual_human", "cartoon", "fake_person", 10),
        ("3D_virtual_human", "relief", "fake_person", 6),
    ]
    i = 0
    for group, scenario, case, n in layout:
        for _ in range(n):
            _write(str(tmp_path), f"images/{group}/{scenario}/{i:012d}.jpg", world.sample(i, case).image_bytes)
            i += 1
    _write(str(tmp_path), "images/real_human/kept/broken.jpg", b"\xff\xd8not a jpeg")
    head, metrics = train_fake_person_head_from_folder(HumanArtFolder(str(tmp_path)))
    print(f"folder head: {metrics}")
    assert metrics["n_images"] == 32 and metrics["n_fake"] == 16 and metrics["n_unreadable"] == 1
    # stratified: a quarter of every scenario held out (rounded), each reported alone and by group
    held_out = {
        k: metrics[f"n_val/{k}"]
        for k in (
            "real_human/kept",
            "real_human/no_person",
            "2D_virtual_human/cartoon",
            "3D_virtual_human/relief",
            "real_human",
            "2D_virtual_human",
            "3D_virtual_human",
        )
    }
    assert held_out == {
        "real_human/kept": 2,
        "real_human/no_person": 2,
        "2D_virtual_human/cartoon": 2,
        "3D_virtual_human/relief": 2,
        "real_human": 4,
        "2D_virtual_human": 2,
        "3D_virtual_human": 2,
    }
    assert metrics["val_accuracy"] == 1.0
    assert all(metrics[f"val_accuracy/{g}"] == 1.0 for g in ("real_human", "2D_virtual_human", "3D_virtual_human"))
    assert head.embedder == "offline_features"


def _memory_store() -> Store:
    return Store(f"memory://filters-{uuid.uuid4().hex}")


def test_default_head_trains_from_a_synthetic_humanart_folder_written_once(monkeypatch):
    store = _memory_store()
    filters = SimulatedFilterResource(fake_head_train_size=40)
    head_bytes, metrics = filters.train_fake_person_head(store)
    print(f"default head: {metrics}")
    url = metrics["train_url"]
    folder = HumanArtFolder(url)
    counts: dict[str, int] = {}
    for e in folder.entries():
        counts[e.stratum] = counts.get(e.stratum, 0) + 1
    # FAKE_HEAD_MIX per 40 images: cartoons are the fake group, every photographic render is real_human
    assert counts == {
        "real_human/kept": 8,
        "real_human/low_quality": 4,
        "real_human/no_person": 2,
        "real_human/many_people": 2,
        "real_human/small_face": 2,
        "2D_virtual_human/cartoon": 20,
    }
    assert metrics["val_accuracy"] == 1.0 and metrics["val_accuracy/real_human"] == 1.0
    assert metrics["val_accuracy/2D_virtual_human"] == 1.0 and metrics["n_val/2D_virtual_human"] == 5

    # the second run reuses the folder (nothing is rendered) and trains the same head
    monkeypatch.setattr(SyntheticWorld, "sample", lambda *a, **k: pytest.fail("re-rendered the training folder"))
    again, _ = filters.train_fake_person_head(store)
    assert again == head_bytes

    # the same folder named by fake_head_train_url goes through the same reader
    configured, metrics2 = FilterResource(fake_head_train_url=url).train_fake_person_head()
    assert configured == head_bytes and metrics2["train_url"] == url


def test_production_head_trains_clip_embeddings_from_a_configured_folder():
    with pytest.raises(ValueError, match="fake_head_train_url"):
        FilterResource(backend="production").train_fake_person_head(_memory_store())
    embedder = FilterResource(backend="production", clip_id="/models/eva-clip", device="cuda").embedder()
    assert isinstance(embedder, ClipImageEmbedder)
    assert (embedder.model_id, embedder.device) == ("/models/eva-clip", "cuda")
    assert isinstance(FilterResource().embedder(), OfflineImageFeatures)


# ------------------------------------------------------------------------------ quality backends


def test_quality_packages_missing_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "hpsv2", None)
    with pytest.raises(BackendUnavailable, match=r"pip install pyiqa.*torchvision"):
        PyiqaQualityScorer().setup()
    with pytest.raises(BackendUnavailable, match=r"pip install hpsv2.*torchvision"):
        HpsV2Scorer().setup()


class FakeLiqe:
    """Stands in for pyiqa's InferenceModel: called with a (N, 3, H, W) tensor in [0, 1], returns (N,)."""

    def __init__(self, value: float) -> None:
        self.value, self.inputs = value, []

    def __call__(self, x):
        import torch

        self.inputs.append(x)
        return torch.full((x.shape[0],), self.value)


def _fake_pyiqa(monkeypatch, metric: FakeLiqe, calls: list) -> None:
    module = types.ModuleType("pyiqa")

    def create_metric(metric_name, as_loss=False, device=None, **kwargs):
        calls.append((metric_name, as_loss, device, kwargs))
        if kwargs.get("pretrained_model_path") == "missing.pt":
            raise FileNotFoundError("missing.pt")
        return metric

    module.create_metric = create_metric
    monkeypatch.setitem(sys.modules, "pyiqa", module)


def test_liqe_scorer_calls_pyiqa_and_maps_1_to_5(monkeypatch):
    calls: list = []
    metric = FakeLiqe(3.4)
    _fake_pyiqa(monkeypatch, metric, calls)
    scorer = PyiqaQualityScorer(pretrained_model_path="/weights/liqe_koniq.pt")
    scorer.setup()
    scorer.setup()  # the metric is built once per worker
    assert calls == [("liqe", False, "cpu", {"pretrained_model_path": "/weights/liqe_koniq.pt"})]
    img = Image.new("RGB", (100, 200), (255, 0, 0))
    scores = scorer.score(img)
    assert scores["liqe"] == pytest.approx(3.4) and scores["quality"] == pytest.approx(0.6)
    x = metric.inputs[-1]
    # RGB order, [0, 1] floats, upscaled so the short side reaches LIQE's 224 px crops
    assert tuple(x.shape) == (1, 3, 448, 224) and str(x.dtype) == "torch.float32"
    assert float(x[0, 0].min()) == pytest.approx(1.0) and float(x[0, 1:].max()) == pytest.approx(0.0)
    for raw, mapped in ((1.0, 0.0), (5.0, 1.0), (5.3, 1.0), (0.7, 0.0)):
        metric.value = raw
        assert scorer.score(img)["quality"] == pytest.approx(mapped)
    with pytest.raises(BackendUnavailable, match=r"liqe_koniq\.pt.*missing\.pt"):
        PyiqaQualityScorer(pretrained_model_path="missing.pt").setup()


def test_hpsv2_scorer_calls_hpsv2_with_the_fixed_prompt(monkeypatch):
    calls: list = []
    module = types.ModuleType("hpsv2")

    def score(imgs_path, prompt, hps_version="v2.0"):
        calls.append((imgs_path, prompt, hps_version))
        return [np.float32(0.27)]

    module.score = score
    monkeypatch.setitem(sys.modules, "hpsv2", module)
    scorer = HpsV2Scorer()
    scorer.setup()
    assert len(calls) == 1  # setup loads the model once by scoring a blank image
    scores = scorer.score(Image.new("L", (64, 128), 90))
    img, prompt, version = calls[-1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 128)
    assert (prompt, version) == ("a photo of a person", "v2.1")
    assert scores == {"hpsv2": pytest.approx(0.27), "quality": pytest.approx(0.7)}

    def broken(imgs_path, prompt, hps_version="v2.0"):
        raise OSError("xswu/HPSv2 not in cache")

    module.score = broken
    with pytest.raises(BackendUnavailable, match="HPS v2 checkpoint"):
        HpsV2Scorer().setup()


def _store_with_head() -> Store:
    store = _memory_store()
    head = LogisticHead(np.zeros(10, np.float32), -10.0, np.zeros(10, np.float32), np.ones(10, np.float32))
    store.write_bytes(FAKE_HEAD_KEY, head.to_bytes())
    return store


def test_quality_backend_is_config_and_its_scores_are_stored(monkeypatch):
    store = _store_with_head()
    assert isinstance(FilterResource().chain(store).quality_scorer, OfflineQualityScorer)
    hps = FilterResource(quality_backend="hpsv2", hpsv2_prompt="a person", hpsv2_version="v2.0").chain(store)
    assert (hps.quality_scorer.prompt, hps.quality_scorer.hps_version) == ("a person", "v2.0")
    with pytest.raises(ValueError, match="quality_backend"):
        FilterResource(quality_backend="ifqa").chain(store)
    settings = FilterResource(quality_backend="liqe", liqe_weights="/w/liqe.pt").chain_settings()
    assert settings["quality_backend"] == "liqe" and settings["liqe_weights"] == "/w/liqe.pt"

    # a rendered person through the local chain with LIQE standing in: rejected below "fair", scores kept
    calls: list = []
    metric = FakeLiqe(2.2)
    _fake_pyiqa(monkeypatch, metric, calls)
    chain = FilterResource(quality_backend="liqe", liqe_weights="/w/liqe.pt").chain(store)
    sample = SyntheticWorld(seed=5).sample(0, "kept")
    result = chain.process(sample.image_bytes)
    assert result.decision == "low_quality" and result.scores["q_liqe"] == pytest.approx(2.2)
    assert result.scores["quality"] == pytest.approx(0.3) and result.scores["n_people"] is None
    metric.value = 4.6
    result = chain.process(sample.image_bytes)
    assert result.decision == "kept" and result.scores["quality"] == pytest.approx(0.9)
    assert calls == [("liqe", False, "cpu", {"pretrained_model_path": "/w/liqe.pt"})]


def test_face_cascades_are_resource_config():
    store = _store_with_head()
    chain = FilterResource(face_profile_cascade=None).chain(store)
    assert chain.face_detector.profile_cascade is None
    assert chain.person_detector.faces is chain.face_detector  # one detector pass serves both steps
    assert chain.face_detector.detect(_photo("camera")) == []


def test_offline_quality_components_mean_what_the_docstring_says():
    """The photos pass with every component in its documented range; each degradation is rejected by
    the component that measures it, at the documented default threshold (min_quality 0.5)."""
    import cv2

    q = OfflineQualityScorer()
    astronaut = np.asarray(_photo("astronaut"))
    for name in ("astronaut", "camera"):
        s = q.score(_photo(name))
        assert s["quality"] == 1.0 and s["sharpness"] > 2000 and 2 < s["noise"] < 4 and 0.4 < s["luminance"] < 0.55
    # grey-level noise of sigma 18 (above the documented 14): the same draw on every channel
    grain = np.random.default_rng(0).normal(0, 18, astronaut.shape[:2] + (1,))
    noisy = np.clip(astronaut + grain, 0, 255).astype(np.uint8)
    degraded = {
        "sharpness_score": cv2.GaussianBlur(astronaut, (0, 0), 10),
        "exposure_score": (astronaut * 0.3).astype(np.uint8),
        "noise_score": noisy,
    }
    for component, pixels in degraded.items():
        s = q.score(Image.fromarray(pixels))
        print(component, {k: round(v, 3) for k, v in s.items()})
        assert s[component] < 0.5 and s["quality"] == s[component]
        assert all(s[c] == 1.0 for c in degraded if c != component)
