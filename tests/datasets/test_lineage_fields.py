"""Every field of a lineage record, the answers to a name that does not exist, and how lineage reaches a
private object store (credentials passed on, stale listings refreshed)."""

import json
import posixpath
import re
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from cosmicman.core.keys import MODELS_PREFIX, TRAINING_RUN_FILE
from cosmicman.datasets.lineage import (
    LineageTargetNotFoundError,
    dataset_lineage,
    dataset_of_shards,
    lineage,
    model_lineage,
    published_models,
)
from cosmicman.datasets.version import write_dataset_version
from tests.datasets.test_dataset_version import make_samples

PRIVATE = "linstore"  # protocol of the in-memory stand-in for a private bucket
TOKEN = "secret"
OPTIONS = {"token": TOKEN}
CREATED = "2026-11-20T08:00:00+00:00"
SHARD = "datasets/cosmicman-hq/v0001/shard-000000.tar"

# per sample: source, batch, filter decision, filter config, parser, annotator, label rounds (None: key absent)
PROVENANCE = [
    ("web", "batch-2", "kept_on_review", {"min_face_px": 53}, "atr-2", "probe-r2", [3, 1]),
    ("shhq", "batch-0", "kept", {"min_face_px": 52}, "atr-1", None, [1]),
    ("web", "batch-2", "kept", {"min_face_px": 53}, "atr-1", "absent", None),
    ("laion", None, "kept", None, "atr-1", "probe-r1", [2]),
]

V0001 = {
    "dataset_version": "v0001",
    "samples": 4,
    "created_at": CREATED,
    "sourcing_batches": ["batch-0", "batch-2"],
    "sources": {"laion": 1, "shhq": 1, "web": 2},
    "filter_decisions": {"kept": 3, "kept_on_review": 1},
    "filter_configs": [{"min_face_px": 52}, {"min_face_px": 53}],
    "parser_versions": ["atr-1", "atr-2"],
    "annotator_versions": ["probe-r1", "probe-r2"],
    "label_rounds": [1, 2, 3],
}

FULL_CONFIG = {
    "pretrained": "sd-base",
    "family": "sd",
    "act_fn": "mish",
    "beta": 0.5,
    "hola_reduction": "paper",
    "steps": 300,
    "seed": 7,
    "lr": 2e-5,
    "resolution": 512,
}


class PrivateStore(MemoryFileSystem):
    """A bucket in memory that behaves like s3fs: access needs the token; listings are cached (directories
    with a trailing slash) until ``invalidate_cache`` drops the path's entry and its parents'."""

    protocol = (PRIVATE,)

    def __init__(self, token=None, **kwargs):
        if token != TOKEN:
            raise PermissionError("the private store needs its token")
        super().__init__(**kwargs)
        self.listings: dict[str, list[dict]] = {}

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix(f"{PRIVATE}://"))

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if path not in self.listings:
            entries = super().ls(path, detail=True)
            self.listings[path] = [
                {**e, "name": e["name"] + "/" if e["type"] == "directory" else e["name"]} for e in entries
            ]
        entries = self.listings[path]
        return entries if detail else [e["name"] for e in entries]

    def exists(self, path, **kwargs):
        path = self._strip_protocol(path)
        parent = posixpath.dirname(path)
        if parent in self.listings:
            return any(e["name"].rstrip("/") == path for e in self.listings[parent])
        return super().exists(path)

    def invalidate_cache(self, path=None):
        if path is None:
            self.listings.clear()
            return
        path = self._strip_protocol(path)
        while path not in ("", "/"):
            self.listings.pop(path, None)
            path = posixpath.dirname(path)


fsspec.register_implementation(PRIVATE, PrivateStore, clobber=True)


def samples_with(provenance):
    samples = make_samples(len(provenance))
    for s, (source, batch, decision, fcfg, parser, annotator, rounds) in zip(samples, provenance, strict=True):
        s.provenance = {"source": source, "source_batch": batch, "filter_decision": decision, "parser_version": parser}
        if fcfg is not None:
            s.provenance["filter_config"] = json.dumps(fcfg)
        if annotator != "absent":
            s.provenance["annotator_version"] = annotator
        if rounds is not None:
            s.provenance["label_rounds"] = rounds
    return samples


def publish_model(root: str, key: str, record: dict) -> str:
    """Write ``training_run.json`` under ``root/key`` (any fsspec URL) and return the model's URL."""
    url = f"{root}/{key}"
    fs, path = fsspec.core.url_to_fs(url, **(OPTIONS if root.startswith(PRIVATE) else {}))
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(posixpath.join(path, TRAINING_RUN_FILE), json.dumps(record).encode())
    return url


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "store")
    write_dataset_version(root, "v0001", samples_with(PROVENANCE), samples_per_shard=2, created_at=CREATED)
    return root


@pytest.fixture
def private():
    """A private store holding v0001; its memory is released afterwards."""
    base = f"/lin-{uuid.uuid4().hex}"
    root = f"{PRIVATE}://{base}"
    write_dataset_version(
        f"memory://{base}", "v0001", samples_with(PROVENANCE), samples_per_shard=2, created_at=CREATED
    )
    yield root
    for key in [k for k in MemoryFileSystem.store if k.startswith(base)]:
        del MemoryFileSystem.store[key]
    MemoryFileSystem.pseudo_dirs[:] = [d for d in MemoryFileSystem.pseudo_dirs if not d.startswith(base)]
    fsspec.filesystem(PRIVATE, **OPTIONS).invalidate_cache()


def test_dataset_lineage_lists_what_the_samples_used(store):
    assert dataset_lineage(store, "v0001") == V0001
    assert list(dataset_lineage(store, "v0001")["sources"]) == ["laion", "shhq", "web"]  # sorted by name


def test_samples_without_a_source_or_decision_count_as_null(tmp_path):
    root = str(tmp_path / "store")
    samples = samples_with(PROVENANCE[:2])
    del samples[1].provenance["source"]
    samples[0].provenance["filter_decision"] = None
    write_dataset_version(root, "v0001", samples, samples_per_shard=2, created_at=CREATED)
    lin = dataset_lineage(root, "v0001")
    assert lin["sources"] == {"null": 1, "web": 1} and lin["filter_decisions"] == {"kept": 1, "null": 1}


def test_unknown_version_is_answered_with_the_published_ones(store, tmp_path):
    write_dataset_version(store, "v0002", samples_with(PROVENANCE[:1]), samples_per_shard=2)
    with pytest.raises(LineageTargetNotFoundError, match=r"^no dataset version v0003; versions: v0001, v0002$"):
        dataset_lineage(store, "v0003")
    empty = str(tmp_path / "empty")
    with pytest.raises(LineageTargetNotFoundError) as err:
        lineage(empty, "v0001")
    assert str(err.value) == f"no dataset version v0001; the store {empty} holds no versions"


def test_model_lineage_pins_the_training_record(store, tmp_path):
    config = {**FULL_CONFIG, "log_every": 5, "shards": ["ignored"]}
    shards = [f"{store}/{SHARD}", f"{store}/datasets/cosmicman-hq/v0001/shard-000001.tar"]
    record = {"config": config, "data": {"shards": shards}, "code_version": "abc123", "finished_at": "2026-11-27"}
    url = publish_model(store, f"{MODELS_PREFIX}/hola", record)
    assert model_lineage(url) == {
        "model": url,
        "code_versions": {"trainer": "abc123"},
        "training": FULL_CONFIG,
        "finished_at": "2026-11-27",
        **V0001,
    }
    # an older record: the fields it lacks are None, not an error
    old = publish_model(store, "models/old", {"config": {"beta": 1.0}, "data": {"shards": shards[:1]}})
    m = model_lineage(old + "/")
    assert m["model"] == old + "/" and m["code_versions"] == {"trainer": None} and m["finished_at"] is None
    assert m["training"] == {k: (1.0 if k == "beta" else None) for k in FULL_CONFIG}
    assert list(m["training"]) == list(FULL_CONFIG)


def test_lineage_resolves_names_keys_paths_and_urls(store):
    record = {"config": FULL_CONFIG, "data": {"shards": [f"{store}/{SHARD}"]}}
    url = publish_model(store, f"{MODELS_PREFIX}/hola", record)
    assert lineage(store, "v0001") == V0001
    assert lineage(store, "hola")["model"] == url  # a published model by its name
    assert lineage(store + "/", "hola")["model"] == url  # the store URL's trailing slash is not doubled
    assert lineage(store + "/", f"{MODELS_PREFIX}/hola")["model"] == url  # a key under the store
    assert lineage("/elsewhere", url)["model"] == url  # an absolute path
    assert lineage("/elsewhere", f"file://{url}")["model"] == f"file://{url}"  # a URL
    assert lineage(store, "hola")["dataset_version"] == "v0001"


@pytest.mark.parametrize("name", ["v001", "v0001x", "xv0001"])
def test_names_that_are_not_versions_are_model_names(store, name):
    publish_model(store, f"{MODELS_PREFIX}/hola", {"config": {}, "data": {"shards": [f"{store}/{SHARD}"]}})
    with pytest.raises(LineageTargetNotFoundError) as err:
        lineage(store, name)
    assert str(err.value) == (
        f"no model at {store}/{MODELS_PREFIX}/{name} (no {TRAINING_RUN_FILE}); models under {MODELS_PREFIX}: hola"
    )


def test_unknown_model_is_answered_with_the_published_ones(store, tmp_path):
    where = f"{store}/{MODELS_PREFIX}"
    with pytest.raises(LineageTargetNotFoundError) as err:
        lineage(store, "hola")
    assert str(err.value) == (
        f"no model at {where}/hola (no {TRAINING_RUN_FILE}); the store {store} holds no models under {MODELS_PREFIX}"
    )
    with pytest.raises(LineageTargetNotFoundError) as err:
        model_lineage(f"{where}/hola")
    assert str(err.value) == f"no model at {where}/hola (no {TRAINING_RUN_FILE}); not a published model"
    for name in ("b", "a"):
        publish_model(store, f"{MODELS_PREFIX}/{name}", {"config": {}, "data": {"shards": []}})
    (tmp_path / "store" / MODELS_PREFIX / "unfinished").mkdir()  # no training record: not published
    with pytest.raises(LineageTargetNotFoundError) as err:
        model_lineage(f"{where}/c", store_url=store)
    assert str(err.value).endswith(f"; models under {MODELS_PREFIX}: a, b")


def test_published_models_are_the_folders_with_a_training_record(store, tmp_path):
    assert published_models(store) == []
    assert published_models(str(tmp_path / "nothing")) == []
    models = tmp_path / "store" / MODELS_PREFIX
    for name in ("zeta", "alpha", "half"):
        (models / name).mkdir(parents=True)
        if name != "half":
            (models / name / TRAINING_RUN_FILE).write_text("{}")
    (models / "notes.txt").write_text("not a model")
    assert published_models(store) == ["alpha", "zeta"]
    assert published_models(store + "/") == ["alpha", "zeta"]


def test_private_store_lineage_passes_the_credentials_on(private):
    shards = [f"{private}/{SHARD}"]
    publish_model(private, f"{MODELS_PREFIX}/hola", {"config": FULL_CONFIG, "data": {"shards": shards}})
    assert published_models(private, OPTIONS) == ["hola"]
    assert dataset_lineage(private, "v0001", OPTIONS) == V0001
    assert lineage(private, "v0001", OPTIONS) == V0001
    m = lineage(private, "hola", OPTIONS)
    assert m["model"] == f"{private}/{MODELS_PREFIX}/hola" and m["training"] == FULL_CONFIG and m["samples"] == 4
    with pytest.raises(LineageTargetNotFoundError, match=re.escape(f"models under {MODELS_PREFIX}: hola")):
        lineage(private, "none", OPTIONS)
    with pytest.raises(LineageTargetNotFoundError, match=r"; versions: v0001$"):
        lineage(private, "v0002", OPTIONS)
    with pytest.raises(PermissionError):
        lineage(private, "v0001")


def test_listings_cached_by_the_store_are_refreshed(private):
    """fsspec shares filesystem instances; a model published after a first look is still found."""
    shards = [f"{private}/{SHARD}"]
    publish_model(private, f"{MODELS_PREFIX}/a", {"config": {}, "data": {"shards": shards}})
    assert published_models(private, OPTIONS) == ["a"]
    fs = fsspec.filesystem(PRIVATE, **OPTIONS)
    fs.makedirs(f"{private}/{MODELS_PREFIX}/b", exist_ok=True)
    fs.pipe_file(f"{private}/{MODELS_PREFIX}/b/weights.bin", b"0")  # upload under way: no record yet
    with pytest.raises(LineageTargetNotFoundError):
        lineage(private, "b", OPTIONS)
    assert fs.ls(f"{private}/{MODELS_PREFIX}/b", detail=False)  # the folder's listing is now cached
    publish_model(private, f"{MODELS_PREFIX}/b", {"config": {}, "data": {"shards": shards}})
    assert published_models(private, OPTIONS) == ["a", "b"]
    assert lineage(private, "b", OPTIONS)["model"] == f"{private}/{MODELS_PREFIX}/b"


@pytest.mark.parametrize("end", ["X", " "])  # only slashes are stripped from the store's and model's paths
def test_names_ending_in_other_characters_are_kept_whole(tmp_path, end):
    root = str(tmp_path / f"store{end}")
    write_dataset_version(root, "v0001", samples_with(PROVENANCE), samples_per_shard=2, created_at=CREATED)
    url = publish_model(root, f"{MODELS_PREFIX}/hola{end}", {"config": {}, "data": {"shards": [f"{root}/{SHARD}"]}})
    assert published_models(root) == [f"hola{end}"]
    assert model_lineage(url)["model"] == url
    m = lineage(root, f"hola{end}")
    assert m["model"] == url and m["dataset_version"] == "v0001"


@pytest.mark.parametrize("end", ["X", " "])
def test_a_cached_listing_of_the_model_folder_is_refreshed(private, end):
    fs = fsspec.filesystem(PRIVATE, **OPTIONS)
    folder = f"{private}/{MODELS_PREFIX}/b{end}"
    fs.pipe_file(f"{folder}/weights.bin", b"0")  # upload under way: no record yet
    assert fs.ls(folder, detail=False)  # someone listed the folder: the listing is cached
    url = publish_model(private, f"{MODELS_PREFIX}/b{end}", {"config": {}, "data": {"shards": [f"{private}/{SHARD}"]}})
    assert model_lineage(url, OPTIONS)["model"] == url


@pytest.mark.parametrize(
    ("urls", "found"),
    [
        ([f"s3://bucket/prefix/{SHARD}"], ("s3://bucket/prefix", "v0001")),
        ([f"s3://bucket/MAX/{SHARD}"], ("s3://bucket/MAX", "v0001")),
        ([f"s3://bucket/prefix//{SHARD}", f"s3://bucket/prefix//{SHARD[:-5]}7.tar"], ("s3://bucket/prefix", "v0001")),
        (["/data/store/datasets/cosmicman-hq/v12345/shard-3.tar"], ("/data/store", "v12345")),
    ],
)
def test_dataset_of_shards(urls, found):
    assert dataset_of_shards(urls) == found


@pytest.mark.parametrize(
    "url",
    [
        "/s/datasets/cosmicman-hq/v001/shard-0.tar",  # three digits: not a version
        "/s/datasets/cosmicman-hq/v0001/shard-0.tar.gz",
        "/s/datasets/cosmicman-hq/v0001/shard-.tar",
        "/s/datasets/other/v0001/shard-0.tar",
        "/s/datasets/cosmicman-hq/shards/abc.tar",  # a shared shard is named by a whole sha256
        "/s/datasets/cosmicman-hq/shards/" + "A" * 64 + ".tar",
    ],
)
def test_urls_outside_a_dataset_version_are_refused(url):
    with pytest.raises(ValueError) as err:
        dataset_of_shards([url])
    assert str(err.value) == f"{url} is not a CosmicMan-HQ shard URL (…/datasets/cosmicman-hq/shards/<sha256>.tar)"


def test_shards_must_come_from_one_version():
    a, b = f"/s/{SHARD}", f"/t/{SHARD}"
    with pytest.raises(ValueError) as err:
        dataset_of_shards([a, b])
    assert str(err.value) == "the shards span 2 dataset versions: [('/s', 'v0001'), ('/t', 'v0001')]"
    with pytest.raises(ValueError, match=re.escape("the shards span 0 dataset versions: []")):
        dataset_of_shards([])
