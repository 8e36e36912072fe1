"""A trained model's publish killed at any point leaves no folder a reader takes for a model, and the next publish
to the same place leaves exactly the whole model: on a real S3 server (killed at an exact request) and on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cosmicman.core.keys import TRAINING_RUN_FILE
from cosmicman.datasets.lineage import published_models
from cosmicman.model.train.publish import publish_folder
from tests.support.s3_server import moto_s3
from tests.support.s3_tripwire import moto_s3_tripwire

REPO = Path(__file__).resolve().parents[2]
BUCKET = "publish"
ROOT = f"s3://{BUCKET}/store"
URL = f"{ROOT}/models/daring_unet/m1"
FILES = {"model_index.json": b"{}", "unet/config.json": b'{"a": 1}', "unet/weights.bin": b"w" * 4096}


def model_folder(folder: Path) -> Path:
    for rel, data in {**FILES, TRAINING_RUN_FILE: b'{"config": {}}'}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def is_first_copy_into_place(environ: dict) -> bool:
    return ".tmp-" not in environ["PATH_INFO"] and "HTTP_X_AMZ_COPY_SOURCE" in environ


def is_marker_put(environ: dict) -> bool:
    return environ["PATH_INFO"].endswith(f"/m1/{TRAINING_RUN_FILE}")


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


def folders(fs, root: str) -> dict[str, set[str]]:
    base = root.removeprefix("s3://") + "/models/daring_unet"
    out: dict[str, set[str]] = {}
    for path in fs.find(base):
        folder, _, rel = path[len(base) + 1 :].partition("/")
        out.setdefault(folder, set()).add(rel)
    return out


@pytest.mark.parametrize("kill_at", [is_first_copy_into_place, is_marker_put])
def test_a_publish_killed_on_s3_leaves_no_model_and_the_next_one_a_whole_model(s3, tmp_path, kill_at, monkeypatch):
    import s3fs

    for name, value in {**s3.env(ROOT), "AWS_ENDPOINT_URL": s3.url}.items():
        monkeypatch.setenv(name, value)  # publish_folder opens the URL with the process's settings, as the trainer
    fs = s3fs.S3FileSystem(**s3.storage_options(), skip_instance_cache=True)
    if fs.exists(f"{BUCKET}/store"):
        fs.rm(f"{BUCKET}/store", recursive=True)
    source = model_folder(tmp_path / "model")
    writer: dict[str, subprocess.Popen] = {}
    tripped = threading.Event()

    def trip(environ: dict) -> bool:
        if environ["REQUEST_METHOD"] == "PUT" and not tripped.is_set() and kill_at(environ):
            os.killpg(writer["proc"].pid, signal.SIGKILL)  # the request is refused, never served: it never happens
            tripped.set()
            return True
        return False

    with moto_s3_tripwire(trip) as door:
        env = {**os.environ, **door.env(ROOT), "AWS_ENDPOINT_URL": door.url}
        code = f"from cosmicman.model.train.publish import publish_folder; publish_folder({str(source)!r}, {URL!r})"
        writer["proc"] = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, start_new_session=True)
        assert writer["proc"].wait(timeout=120) == -signal.SIGKILL and tripped.is_set()
    left = folders(fs, ROOT)
    assert left, "the kill came before anything was written"
    assert all(TRAINING_RUN_FILE not in files for files in left.values())
    assert published_models(ROOT, s3.storage_options()) == []

    publish_folder(source, URL)
    assert folders(fs, ROOT) == {"m1": {*FILES, TRAINING_RUN_FILE}}
    assert published_models(ROOT, s3.storage_options()) == ["m1"]
    assert fs.cat_file(URL.removeprefix("s3://") + "/unet/weights.bin") == FILES["unet/weights.bin"]


def test_a_publish_killed_at_the_rename_on_disk_leaves_no_model(tmp_path):
    source = model_folder(tmp_path / "model")
    root = tmp_path / "store"
    url = str(root / "models" / "daring_unet" / "m1")
    # the process dies where the staged folder would be renamed into place
    code = (
        "import os; from cosmicman.model.train import publish; "
        "publish.os.replace = lambda a, b: os._exit(9); "
        f"publish.publish_folder({str(source)!r}, {url!r})"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 9
    assert [p.name for p in (root / "models" / "daring_unet").iterdir()][0].startswith("m1.tmp-")
    assert published_models(str(root)) == []
    publish_folder(source, url)
    assert [p.name for p in (root / "models" / "daring_unet").iterdir()] == ["m1"]
    assert published_models(str(root)) == ["m1"]
    assert {p.relative_to(url).as_posix() for p in Path(url).rglob("*") if p.is_file()} == {*FILES, TRAINING_RUN_FILE}
