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


def test_a_key_another_process_wrote_is_read_on_s3_after_a_listing():
    """A long-lived reader (a sensor's code server) listed the prefix before a run wrote a new table: it still
    reads the table (s3fs would otherwise answer from its cached listing with FileNotFoundError)."""
    import s3fs

    from tests.support.s3_server import moto_s3

    with moto_s3("store-cache") as endpoint:
        reader = Store("s3://store-cache/flywheel", **endpoint.storage_options())
        writer = s3fs.S3FileSystem(**endpoint.storage_options(), skip_instance_cache=True)
        writer.pipe_file("store-cache/flywheel/tables/t/a.parquet", b"a")
        assert reader.list("tables/t") == ["tables/t/a.parquet"] and reader.exists("tables/t/a.parquet")
        writer.pipe_file("store-cache/flywheel/tables/t/b.parquet", b"b")
        assert reader.exists("tables/t/b.parquet") and reader.read_bytes("tables/t/b.parquet") == b"b"
