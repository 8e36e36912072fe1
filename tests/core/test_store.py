import os

import polars as pl
import pytest

from cosmicman.core.keys import blob_key
from cosmicman.core.store import Store


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    if request.param == "memory":
        return Store(f"memory://store-{os.urandom(4).hex()}")
    return Store(str(tmp_path / "store"))


def test_blobs_are_content_addressed_and_stored_once(store):
    first = store.put_blob(b"same bytes", "jpg")
    again = store.put_blob(b"same bytes", "jpg")
    assert first.created and not again.created
    assert first.key == again.key == blob_key(first.sha256, "jpg")
    assert first.key.startswith(f"blobs/{first.sha256[:2]}/")
    assert store.list("blobs") == [first.key]
    assert store.read_bytes(first.key) == b"same bytes"


def test_tables_roundtrip_and_rewrite_is_idempotent(store):
    df = pl.DataFrame({"sha256": ["a", "b"], "n": [1, 2]})
    store.write_table("tables/x/batch-00000.parquet", df)
    store.write_table("tables/x/batch-00000.parquet", df)
    assert store.list("tables") == ["tables/x/batch-00000.parquet"]
    assert store.read_table("tables/x/batch-00000.parquet").equals(df)


def test_a_crashed_write_leaves_nothing_visible(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"))
    store.write_bytes("tables/t.parquet", b"old")

    def crash(*args, **kwargs):
        raise OSError("disk gone mid-publish")

    monkeypatch.setattr(store.fs, "mv", crash)
    with pytest.raises(OSError):
        store.write_bytes("tables/t.parquet", b"new")
    # the old version is intact and the half-done temporary file is not listed
    assert store.read_bytes("tables/t.parquet") == b"old"
    assert store.list("tables") == ["tables/t.parquet"]


def test_uri_is_openable_by_another_reader(tmp_path):
    import fsspec

    store = Store(str(tmp_path / "s"))
    store.write_json("a/b.json", {"x": 1})
    with fsspec.open(store.uri("a/b.json"), "rb") as f:
        assert b'"x": 1' in f.read()
