"""Issue 17's scale bench: what building, checking and training on CosmicMan-HQ versions costs as the pool grows,
through the code the assets run.

    .venv/bin/python bench/scale.py [--rows 1000000] [--work DIR]

A synthetic pool (bench/scale_pool.py: real rows, masks and captions, tiny images) grows in sourcing batches of
2 % of ``--rows``. At three pool sizes (a tenth, three tenths and all of ``--rows``) the bench builds a version
over the whole pool (what the ``cosmicman_hq`` asset runs: ``cosmicman.datasets.store_pool.version_store``, with
its worker processes, one per core), then lands one more batch and builds again (the steady state: a version that
adds one batch to the last), and checks that version (``verify_version``). Each build and check runs in its own
process, so its peak RSS is its own; a build's adds its workers' (their largest sum, sampled).

The store is a local folder under ``--work`` (on disk: shards are few, large files); its ``blobs/`` folder, a
million small files, lives on tmpfs when /dev/shm exists (a file creation on this VM's ext4 costs 0.57 ms).

Printed last:
  hq_rss_bytes_per_row: the slope of a build's peak RSS against the pool's rows, smallest pool to largest (the
    larger of the two series: whole builds and one-batch builds).
  hq_rewrite_ratio: bytes the one-batch build at the largest pool wrote (shards, manifest files, version files)
    over the bytes of the shards holding just its new samples, which any version holding them must write.
  launch_payload_bytes_6m: what the training launcher puts into the pod's environment and arguments for a
    version of 6M images (its shard list included), through the launch's own steps.
  annotation_rows_per_new_row: rows the per-batch annotations and captions assets write when a batch lands,
    over the batch's rows.
  latent_reuse_after_new_version: the share of latents a training run on a version that adds 2 % reuses from
    the run on the version before (the latent cache of the trainer's reader).
  verify_time_exponent: the log-log slope of the one-batch version's check time against the pool's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from scale_pool import SyntheticPool  # noqa: E402

from cosmicman.core.store import Store  # noqa: E402

BATCH_SHARE = 0.02  # a sourcing batch, of the largest pool
POOL_SHARES = (0.1, 0.3, 1.0)  # the pool sizes measured, of --rows
SAMPLES_PER_SHARD = 10_000  # the bench's shard size (production: COSMICMAN_SHARD_SAMPLES)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def child(kind: str, store_url: str) -> dict:
    """Run one build or check in a fresh process; its JSON answer, with its own peak RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--store", store_url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class WorkersPeak:
    """The largest sum of the resident memory of this process's child processes (the build's workers), sampled
    every ``interval`` seconds in a thread. ``ru_maxrss`` of children is no use here: a spawned worker's counts
    the parent's memory it held between fork and exec."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        me = str(os.getpid())
        while not self._stop.wait(interval):
            total = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                    if fields.get("PPid", "").strip() == me and "VmRSS" in fields:
                        total += int(fields["VmRSS"].split()[0]) * 1024
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_child(kind: str, store_url: str) -> None:
    from cosmicman.datasets.build import ShardPolicy
    from cosmicman.datasets.store_pool import version_store
    from cosmicman.datasets.verification import verify_version
    from cosmicman.environments.settings import build_workers

    store = Store(store_url)
    started = time.perf_counter()
    workers = build_workers()  # what the cosmicman_hq asset runs with: one per core unless set
    workers_peak = WorkersPeak()
    if kind == "build":
        built = version_store(store, ShardPolicy(samples_per_shard=SAMPLES_PER_SHARD), workers=workers)
        counts = built.counts
        answer = {"version": built.version, "samples": built.samples, "counts": counts.__dict__ if counts else None}
    else:
        from cosmicman.core.keys import LATEST_DATASET_KEY

        version = store.read_json(LATEST_DATASET_KEY)["version"]
        checked = verify_version(store.url, version)
        answer = {"version": version, "intact": checked.intact, "problems": checked.problems[:5]}
    answer["seconds"] = time.perf_counter() - started
    # the build's own peak plus its workers' largest sum, as if they peaked at once
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    answer["peak_rss_bytes"] = own + workers_peak.stop()
    answer["own_peak_rss_bytes"] = own
    print(json.dumps(answer))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def versions_at_scale(rows: int, work: Path) -> dict:
    """The pool chain: at each size a whole build, one more batch, a one-batch build and its check."""
    store_dir = work / "store"
    store_dir.mkdir(parents=True)
    if Path("/dev/shm").is_dir():
        blobs = Path(tempfile.mkdtemp(prefix="cosmicman-scale-blobs-", dir="/dev/shm"))
        (store_dir / "blobs").symlink_to(blobs)
    store = Store(str(store_dir))
    pool = SyntheticPool(store)
    batch_rows = max(1, round(rows * BATCH_SHARE))
    sizes, whole, steady, checks = [], [], [], []
    n_batches = 0
    try:
        for share in POOL_SHARES:
            target = round(rows * share) - batch_rows
            while pool.rows < target:
                pool.add_batch(f"batch-{n_batches:05d}", min(batch_rows, target - pool.rows))
                n_batches += 1
            whole.append(child("build", store.url))
            before = du(store_dir / "datasets")
            pool.add_batch(f"batch-{n_batches:05d}", batch_rows)
            n_batches += 1
            steady.append(child("build", store.url))
            steady[-1]["written_on_disk"] = du(store_dir / "datasets") - before
            checks.append(child("verify", store.url))
            sizes.append(pool.rows)
            print(
                f"  pool {pool.rows:>9,} rows: whole build {whole[-1]['seconds']:6.1f} s, "
                f"peak RSS {whole[-1]['peak_rss_bytes'] / 2**20:6.0f} MiB; one-batch build "
                f"{steady[-1]['seconds']:6.1f} s, {steady[-1]['peak_rss_bytes'] / 2**20:6.0f} MiB "
                f"(its own process {steady[-1]['own_peak_rss_bytes'] / 2**20:.0f}), "
                f"wrote {steady[-1]['written_on_disk'] / 2**20:.1f} MiB; check {checks[-1]['seconds']:5.2f} s "
                f"({'intact' if checks[-1]['intact'] else checks[-1]['problems']})",
                flush=True,
            )
    finally:
        if (store_dir / "blobs").is_symlink():
            shutil.rmtree((store_dir / "blobs").resolve(), ignore_errors=True)
    new_shard_bytes = steady[-1]["counts"]["written_shard_bytes"]
    return {
        "sizes": sizes,
        "rss_whole": slope(sizes, [w["peak_rss_bytes"] for w in whole]),
        "rss_steady": slope(sizes, [s["peak_rss_bytes"] for s in steady]),
        "rewrite_ratio": steady[-1]["written_on_disk"] / new_shard_bytes,
        "verify_exponent": slope([math.log(s) for s in sizes], [math.log(c["seconds"]) for c in checks]),
        "checks_intact": all(c["intact"] for c in checks),
    }


def launch_payload_6m(work: Path) -> int:
    """The largest payload of the three Kubernetes launchers (training Job, TrainJob, evaluation pod) for the
    training config of a 6M-image version, measured as tests/resources/test_launch_payload.py does."""
    from tests.resources.test_launch_payload import KINDS, launcher, measured, training_config

    config = training_config(6_000_000)
    store = Store(str(work / "store"))
    return max(measured(store, {"6M": config}, launcher(kind, work / kind))["6M"].payload for kind in KINDS)


def annotation_rows_per_new_row(work: Path, batches: int = 4, rows: int = 50) -> float:
    """Rows the ``annotations`` and ``captions`` partitions write when one batch lands on a pool of ``batches``
    annotated ones, over the new batch's kept rows, read from the materializations as the UI shows them."""
    import dagster as dg
    import polars as pl

    from cosmicman.assets.common import sourcing_batches
    from cosmicman.core.keys import table_key
    from tests.assets.test_pool_annotation import annotate, rows_since
    from tests.assets.test_pool_annotation import pool as annotated_pool

    fixture = annotated_pool.__wrapped__  # the test's pool: filtered batches, an adopted round-1 annotator
    from cosmicman.simulation.world import SyntheticWorld

    class Factory:
        def mktemp(self, name: str) -> Path:
            path = work / name
            path.mkdir(parents=True)
            return path

    setup = fixture(Factory())
    store: Store = setup["store"]
    world = SyntheticWorld(seed=5)
    names = [f"batch-{i:05d}" for i in range(2, 2 + batches)]
    for n, batch in enumerate(names):
        puts = [store.put_blob(world.sample(1000 + n * rows + i, case="kept").image_bytes, "jpg") for i in range(rows)]
        table = {"sha256": [p.sha256 for p in puts], "blob_key": [p.key for p in puts], "decision": "kept"}
        store.write_table(table_key("filtered_images", batch), pl.DataFrame(table))
    with dg.instance_for_test() as instance:
        from cosmicman.assets.annotation import annotation_rounds

        instance.add_dynamic_partitions(annotation_rounds.name, ["round-001"])
        instance.add_dynamic_partitions(sourcing_batches.name, ["batch-00000", "batch-00001", *names])
        for batch in ["batch-00000", "batch-00001", *names[:-1]]:  # the pool, annotated batch by batch
            assert annotate(instance, store, batch).success
        landed = instance.fetch_materializations(dg.AssetKey("captions"), limit=1).records[0].storage_id
        assert annotate(instance, store, names[-1]).success  # the batch that lands
        written = rows_since(instance, "annotations", "images", landed) + rows_since(
            instance, "captions", "captions", landed
        )
    return written / (2 * rows)


def latent_reuse(work: Path, rows: int = 20_000) -> float:
    """The share of latents reused by a version that adds 2 % to the one before: the trainer's reader
    (``ShardDataset``) and latent cache over both versions' shard lists; the encoder is a stand-in that returns
    tensors of the right shapes, since which units the cache reuses does not depend on what it holds."""
    import torch

    from cosmicman.core.tokenizer import load_clip_tokenizer
    from cosmicman.datasets.build import ShardPolicy
    from cosmicman.datasets.layout import excluded_samples, shard_urls
    from cosmicman.datasets.store_pool import version_store
    from cosmicman.model.latent_cache import LatentCache, build_cache, reused_share
    from cosmicman.model.shards import ShardDataset

    store = Store(str(work / "store"))
    pool = SyntheticPool(store)
    batch = max(1, rows // 50)
    for i in range(rows // batch):
        pool.add_batch(f"batch-{i:05d}", batch)
    policy = ShardPolicy(samples_per_shard=max(1, batch // 4))
    first = version_store(store, policy)
    pool.add_batch(f"batch-{rows // batch:05d}", batch)
    second = version_store(store, policy)

    def encode(pixels: torch.Tensor, ids: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        n = pixels.shape[0]
        return {"latent_mean": torch.zeros(n, 4, 4, 4), "latent_std": torch.ones(n, 4, 4, 4),
                "hidden": torch.zeros(n, 77, 8)}  # fmt: skip

    tokenizer, cache_url = load_clip_tokenizer(), str(work / "cache")

    def cache_for(version: str) -> dict[str, int]:
        reader = ShardDataset(
            shard_urls(store.url, version), tokenizer, 32, (4, 4),
            excluded_samples=excluded_samples(store.url, version),
        )  # fmt: skip
        return build_cache(LatentCache(cache_url, "bench"), reader, encode, 256, say=lambda _: None)

    cache_for(first.version)
    return reused_share(cache_for(second.version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="the largest pool, in rows")
    parser.add_argument("--work", type=Path, default=None, help="a folder for the store (default: a temporary one)")
    parser.add_argument("--child", choices=("build", "verify"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.store)
        return
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="cosmicman-scale-"))
    try:
        print(f"versions over pools up to {args.rows:,} rows (store under {work})", flush=True)
        scale = versions_at_scale(args.rows, work / "versions")
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
            payload = launch_payload_6m(work / "launch")
        print(f"launch payload of a 6M-image version: {payload} bytes", flush=True)
        # each materialization logs its every event to stderr: the figure is what this bench prints
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
            annotated = annotation_rows_per_new_row(work / "annotation")
        print(f"rows annotated and captioned per row of a new batch: {annotated:.2f}", flush=True)
        reuse = latent_reuse(work / "latents")
        print(f"latents reused by a version that adds 2 %: {reuse:.3f}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bench took {time.perf_counter() - started:.0f} s")
    print(f"hq_rss_bytes_per_row: {max(scale['rss_whole'], scale['rss_steady']):.0f}")
    print(f"hq_rewrite_ratio: {scale['rewrite_ratio']:.2f}")
    print(f"launch_payload_bytes_6m: {payload}")
    print(f"annotation_rows_per_new_row: {annotated:.2f}")
    print(f"latent_reuse_after_new_version: {reuse:.3f}")
    print(f"verify_time_exponent: {scale['verify_exponent']:.2f}")


if __name__ == "__main__":
    main()
