"""The raw_images asset over a LAION-style list and two web APIs, keys only from the environment."""

import time
import urllib.parse

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cosmicman.assets.sourcing import raw_images
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from tests.sourcing.test_ingest import jpeg, photo_like
from tests.support.fake_apis import FakeApiServer
from tests.support.image_server import ImageServer

TERM = "woman in a red dress"


def _serve_photos_of(fake, server: ImageServer, seed0: int) -> None:
    """Point the fake API's photo URLs at the image server and put a distinct photo behind each."""
    fake.image_base_url = server.url("img")
    for i in range(fake.photos_per_term):
        photo = fake.photo(TERM, i) if hasattr(fake, "photo") else fake.hit(TERM, i)
        urls = [v for v in _strings(photo) if v.startswith(fake.image_base_url)]
        for url in urls:
            name = urllib.parse.urlsplit(url).path.split("/img/", 1)[1]
            (server.root / name).parent.mkdir(parents=True, exist_ok=True)
            (server.root / name).write_bytes(jpeg(photo_like(seed0 + i)))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)


def test_raw_images_sources_a_url_list_and_web_apis_with_keys_from_the_environment(tmp_path, monkeypatch):
    with FakeApiServer(time.time, photos_per_term=4) as apis:
        images = ImageServer(tmp_path / "img")
        (tmp_path / "img").mkdir()
        _serve_photos_of(apis.flickr, images, 100)
        _serve_photos_of(apis.unsplash, images, 200)
        for i in range(3):
            (tmp_path / "img" / f"laion-{i}.jpg").write_bytes(jpeg(photo_like(300 + i)))
        pq.write_table(
            pa.table({"url": [images.url(f"img/laion-{i}.jpg") for i in range(3)], "caption": ["a"] * 3}),
            tmp_path / "list.parquet",
        )
        monkeypatch.setenv("FLICKR_API_KEY", apis.flickr_key)
        monkeypatch.setenv("UNSPLASH_ACCESS_KEY", apis.unsplash_key)
        sourcing = SourcingResource(
            parquet_url=str(tmp_path / "list.parquet"),
            parquet_batch_size=3,
            api_terms=[TERM],
            flickr_api_key=dg.EnvVar("FLICKR_API_KEY"),
            flickr_batch_size=4,
            flickr_licences=[],
            flickr_base_url=apis.flickr.base_url,
            unsplash_access_key=dg.EnvVar("UNSPLASH_ACCESS_KEY"),
            unsplash_batch_size=4,
            unsplash_base_url=apis.unsplash.base_url,
            workers=0,
        )
        store = ObjectStoreResource(url=str(tmp_path / "store"))
        with images, dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("sourcing_batches", ["batch-00000"])
            result = dg.materialize(
                [raw_images],
                partition_key="batch-00000",
                instance=instance,
                resources={"object_store": store, "sourcing": sourcing},
            )
            logs = "\n".join(str(e) for e in instance.all_logs(result.run_id))
        meta = {k: v.value for k, v in result.asset_materializations_for_node("raw_images")[0].metadata.items()}
        assert (meta["requested"], meta["stored"], meta["failed"]) == (11, 11, 0)
        assert meta["per_source"] == {"flickr": 4, "laion": 3, "unsplash": 4}
        assert meta["api_downloads_tracked"] == 4 and len(apis.unsplash.downloads_tracked) == 4
        assert apis.flickr_key not in logs and apis.unsplash_key not in logs
    raw = store.store().read_table("tables/raw_images/batch-00000.parquet")
    web = raw.filter(pl.col("source") != "laion")
    assert min(web.select(pl.col("licence", "author", "page_url").str.len_chars().min()).row(0)) > 0
