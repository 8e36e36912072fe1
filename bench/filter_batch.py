"""Filtering bench: a 100,000-record sourcing batch through the ``filtered_images`` graph asset.

    .venv/bin/python bench/filter_batch.py            (from the repo root; about 5-10 minutes on 2 cores)

Records are synthetic-world renders scaled to 0.4 (128x256), each made distinct by a stamped record
number, in a fixed mix per 1000 (MIX below) so every slice of the batch has the same mix. Thresholds
are scaled by the same 0.4 and the fake-person head is trained on scaled renders, so the chain runs its
size rule, fake-person head, quality scorer and person / face detectors for real; the output says which
share of the batch reached each stage. The detectors (HOG at a fixed 320 px working height, Haar) cost
~100x the other stages, so their share is kept small to fit the batch in minutes; their own throughput
is measured apart first.

Measured, all with the Dagster multiprocess executor (one process per step, OpenCV and BLAS on one
thread each): a 5,000-record batch as one shard (the baseline), then the 100,000-record batch as two
shards in parallel. Images/s per core are the shard steps' rows over their step durations; peak RSS is
of the whole process tree (psutil, sampled every 0.1 s, RSS summed over the bench process and all its
descendants: shared pages count once per process, so the sum over-counts) plus ru_maxrss.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# one thread per process for every numeric library: "per core" figures, and fair parallel shards
os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from cosmicman.assets.common import sourcing_batches  # noqa: E402
from cosmicman.assets.filtering import build_filtered_images  # noqa: E402
from cosmicman.core.imageio import decode_image  # noqa: E402
from cosmicman.core.keys import blob_key, table_key  # noqa: E402
from cosmicman.core.store import Store  # noqa: E402
from cosmicman.filtering.chain import FilterChain  # noqa: E402
from cosmicman.filtering.decisions import FilterConfig  # noqa: E402
from cosmicman.filtering.fake_person import train_fake_person_head  # noqa: E402
from cosmicman.resources.filters import FAKE_HEAD_KEY, FilterResource  # noqa: E402
from cosmicman.resources.storage import ObjectStoreResource  # noqa: E402
from cosmicman.simulation.world import SyntheticWorld  # noqa: E402

SCALE = 0.4
RECORDS = 100_000
BASELINE_RECORDS = 5_000
BASES_PER_CASE = 8
# records per 2000 by the synthetic world's case; the last four reach the person / face detectors (0.3 %)
MIX = {
    "corrupt": 60,
    "too_small": 1100,
    "fake_person": 300,
    "low_quality": 534,
    "kept": 3,
    "no_person": 1,
    "many_people": 1,
    "small_face": 1,
}
DETECTOR_CASES = ("kept", "no_person", "many_people", "small_face")
# the chain's order: a record reached a stage unless an earlier stage rejected it
STAGES = [
    ("decode", ()),
    ("size rule", ("corrupt",)),
    ("fake-person head", ("too_small",)),
    ("quality", ("fake_person",)),
    ("person detector", ("low_quality",)),
    ("face detector", ("no_person", "many_people")),
]
BATCH, BASELINE_BATCH = "batch-00001", "batch-00000"


def filter_resource() -> FilterResource:
    base = FilterConfig()
    return FilterResource(
        min_short_side=int(base.min_short_side * SCALE),
        min_long_side=int(base.min_long_side * SCALE),
        min_face_px=int(base.min_face_px * SCALE),
    )


def case_schedule() -> list[str]:
    """The cases of 2000 consecutive records, shuffled once: every slice of 2000 has the mix exactly."""
    slots = [case for case, n in MIX.items() for _ in range(n)]
    np.random.default_rng(7).shuffle(slots)
    return slots


def _scaled(data: bytes) -> np.ndarray:
    img = decode_image(data)
    return np.asarray(img.resize((max(1, round(img.width * SCALE)), max(1, round(img.height * SCALE))), Image.LANCZOS))


def base_images(seed: int, per_case: int) -> dict[str, list[np.ndarray]]:
    """Scaled renders per case; corrupt records start from a kept render and are cut short."""
    world = SyntheticWorld(seed=seed)
    return {
        case: [
            _scaled(world.sample(1000 * n + i, "kept" if case == "corrupt" else case).image_bytes)
            for i in range(per_case)
        ]
        for n, case in enumerate(MIX)
    }


def record_bases(chain: FilterChain, per_case: int = BASES_PER_CASE) -> dict[str, list[np.ndarray]]:
    """Scaled renders the chain decides as their case (at 0.4 scale some blurred renders look sharp, and the
    detectors miss a few people), so the mix of decisions, and of the work done, is MIX exactly."""
    world = SyntheticWorld(seed=77)
    bases: dict[str, list[np.ndarray]] = {}
    for n, case in enumerate(MIX):
        bases[case] = []
        for i in range(20 * per_case):
            if len(bases[case]) == per_case:
                break
            render = _scaled(world.sample(1000 * n + i, "kept" if case == "corrupt" else case).image_bytes)
            if case == "corrupt" or chain.process(record_bytes({case: [render]}, case, 0)).decision == case:
                bases[case].append(render)
        assert len(bases[case]) == per_case, f"too few {case} renders decided as {case}"
    return bases


def record_bytes(bases: dict[str, list[np.ndarray]], case: str, index: int) -> bytes:
    """The base render with the record number stamped as 24 black / white pixels in the top row."""
    a = bases[case][index % len(bases[case])].copy()
    bits = np.array([(index >> b) & 1 for b in range(24)], np.uint8) * 255
    a[0, :24] = bits[:, None]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) * (40 + index % 30) // 100] if case == "corrupt" else data


_BASES: dict[str, list[np.ndarray]] = {}


def _init_worker(bases: dict[str, list[np.ndarray]]) -> None:
    _BASES.update(bases)


def _write_records(root: str, cases: list[str], start: int, stop: int) -> list[tuple[str, str, str]]:
    rows = []
    for i in range(start, stop):
        data = record_bytes(_BASES, cases[i % len(cases)], i)
        sha = hashlib.sha256(data).hexdigest()
        key = blob_key(sha, "jpg")
        with open(os.path.join(root, key), "wb") as f:
            f.write(data)
        rows.append((sha, key, "jpg"))
    return rows


def write_batch(store: Store, bases: dict, batch: str, first: int, count: int, workers: int = 2) -> pl.DataFrame:
    """Blobs written straight into the store's layout (setup, not measured) and the batch's raw table."""
    for h in range(256):
        os.makedirs(os.path.join(store.root, "blobs", f"{h:02x}"), exist_ok=True)
    cases = case_schedule()
    starts = list(range(first, first + count, 5000))
    stops = [min(s + 5000, first + count) for s in starts]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(bases,)) as pool:
        parts = pool.map(_write_records, [store.root] * len(starts), [cases] * len(starts), starts, stops)
        rows = [r for part in parts for r in part]
    raw = pl.DataFrame(rows, schema={"sha256": pl.Utf8, "blob_key": pl.Utf8, "ext": pl.Utf8}, orient="row")
    assert raw["sha256"].n_unique() == count, "records must be distinct"
    store.write_table(table_key("raw_images", batch), raw)
    return raw


def train_head() -> bytes:
    """The fake-person head on scaled renders (not the records' own): cartoons against every photographic case."""
    renders = base_images(seed=78, per_case=12)
    real = [
        Image.fromarray(a)
        for c in ("kept", "low_quality", "no_person", "many_people", "small_face")
        for a in renders[c]
    ]
    fake = [Image.fromarray(a) for a in renders["fake_person"]]
    head, metrics = train_fake_person_head(real + fake, [0] * len(real) + [1] * len(fake))
    print(f"fake-person head on {len(real) + len(fake)} scaled renders: val accuracy {metrics['val_accuracy']:.3f}")
    return head.to_bytes()


def stage_speeds(bases: dict[str, list[np.ndarray]], chain: FilterChain) -> None:
    """Per-stage throughput of the chain in this process, on records of each kind."""
    groups = {
        "corrupt": ["corrupt"],
        "too_small": ["too_small"],
        "fake_person": ["fake_person"],
        "low_quality": ["low_quality"],
        "detectors": list(DETECTOR_CASES),
    }
    print("chain throughput by how far a record gets (one core, this process):")
    for name, cases in groups.items():
        n = 8 if name == "detectors" else 200
        datas = [record_bytes(bases, cases[i % len(cases)], 10_000_000 + i) for i in range(n)]
        t = time.perf_counter()
        for d in datas:
            chain.process(d)
        dt = time.perf_counter() - t
        print(f"  {name:<12} {n / dt:8.1f} images/s  ({1000 * dt / n:.2f} ms each)")


class TreeRss:
    """Peak of RSS summed over this process and all its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s, self.peak, self.procs_at_peak = every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total, n = 0, 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    n += 1
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.procs_at_peak = total, n
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_job() -> dg.JobDefinition:
    """Rebuilt in every step process (the multiprocess executor reconstructs the job by this function)."""
    defs = dg.Definitions(
        assets=[
            dg.AssetSpec("raw_images", partitions_def=sourcing_batches),
            dg.AssetSpec("fake_person_classifier"),
            build_filtered_images(),
        ],
        jobs=[dg.define_asset_job("bench_filtered_images", selection=["filtered_images"])],
        resources={"object_store": ObjectStoreResource(url=os.environ["BENCH_STORE"]), "filters": filter_resource()},
    )
    return defs.resolve_job_def("bench_filtered_images")


def run_batch(instance: dg.DagsterInstance, batch: str, shard_rows: int, workers: int) -> dict:
    config = {
        "ops": {"filtered_images": {"ops": {"plan_filter_shards": {"config": {"shard_rows": shard_rows}}}}},
        "execution": {"config": {"multiprocess": {"max_concurrent": workers}}},
    }
    started = time.perf_counter()
    with (
        TreeRss() as rss,
        dg.execute_job(
            dg.reconstructable(bench_job), instance, run_config=config, tags={"dagster/partition": batch}
        ) as result,
    ):
        assert result.success, "the bench run failed"
        run_id = result.run_id
    wall = time.perf_counter() - started
    steps: dict[str, dict[str, float]] = {}
    for record in instance.all_logs(run_id):
        ev = record.dagster_event
        if ev is not None and ev.step_key and ev.event_type_value in ("STEP_START", "STEP_SUCCESS"):
            steps.setdefault(ev.step_key, {})[ev.event_type_value] = record.timestamp
    shard_steps = {k: v["STEP_SUCCESS"] - v["STEP_START"] for k, v in steps.items() if ".filter_shard[" in k}
    filter_span = max(v["STEP_SUCCESS"] for k, v in steps.items() if k in shard_steps) - min(
        v["STEP_START"] for k, v in steps.items() if k in shard_steps
    )
    return {
        "wall": wall,
        "shard_steps": shard_steps,
        "filter_span": filter_span,
        "rss_peak": rss.peak,
        "rss_procs": rss.procs_at_peak,
    }


def stage_shares(table: pl.DataFrame) -> list[tuple[str, float]]:
    counts = dict(table.group_by("decision").len().iter_rows())
    remaining, out = len(table), []
    for stage, rejected_before in STAGES:
        remaining -= sum(counts.get(d, 0) for d in rejected_before)
        out.append((stage, remaining / len(table)))
    return out


def main() -> None:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cosmicman-filter-bench-"))
    try:
        store_url = str(work / "store")
        os.environ["BENCH_STORE"] = store_url
        store = Store(store_url)
        store.write_bytes(FAKE_HEAD_KEY, train_head())
        chain = filter_resource().chain(store)
        chain.setup()
        bases = record_bases(chain)
        stage_speeds(bases, chain)
        t = time.perf_counter()
        write_batch(store, bases, BASELINE_BATCH, 0, BASELINE_RECORDS)
        write_batch(store, bases, BATCH, BASELINE_RECORDS, RECORDS)
        print(
            f"setup: {BASELINE_RECORDS} + {RECORDS} distinct records written in {time.perf_counter() - t:.0f} s "
            f"({sum(f.stat().st_size for f in (work / 'store' / 'blobs').rglob('*.jpg')) / 2**20:.0f} MiB)"
        )

        (work / "dagster").mkdir()
        with dg.DagsterInstance.local_temp(
            str(work / "dagster"), overrides={"telemetry": {"enabled": False}}
        ) as instance:
            instance.add_dynamic_partitions(sourcing_batches.name, [BASELINE_BATCH, BATCH])
            one = run_batch(instance, BASELINE_BATCH, shard_rows=BASELINE_RECORDS, workers=1)
            two = run_batch(instance, BATCH, shard_rows=RECORDS // 2, workers=2)
        table = store.read_table(table_key("filtered_images", BATCH))
        assert len(table) == RECORDS

        print("\nshare of the 100k batch reaching each stage:")
        for stage, share in stage_shares(table):
            print(f"  {stage:<17} {100 * share:6.2f} %")
        decisions = dict(table.group_by("decision").len().sort("decision").iter_rows())
        print(f"  decisions: {decisions}")

        (one_step,) = one["shard_steps"].values()
        one_rate = BASELINE_RECORDS / one_step
        two_rates = [RECORDS / 2 / s for s in two["shard_steps"].values()]
        two_rate = RECORDS / two["filter_span"]
        print(
            f"\nbaseline, {BASELINE_RECORDS} records in one shard: {one_step:.1f} s filter step, "
            f"{one_rate:.1f} images/s per core; whole run {one['wall']:.1f} s, peak tree RSS "
            f"{one['rss_peak'] / 2**30:.3f} GiB"
        )
        print(
            f"{RECORDS} records in two parallel shards: steps {', '.join(f'{s:.1f} s' for s in two['shard_steps'].values())}"
            f" -> {', '.join(f'{r:.1f}' for r in two_rates)} images/s per core; both shards {two_rate:.1f} images/s "
            f"({two_rate / 2:.1f} per core); whole run {two['wall']:.1f} s"
        )
        print(
            f"  two parallel shards vs one shard: x{two_rate / one_rate:.2f} images/s (2.00 = perfect on two free cores), "
            f"per core x{two_rate / 2 / one_rate:.2f}"
        )
        self_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(
            f"  peak RSS, 100k run: process tree {two['rss_peak'] / 2**30:.3f} GiB over {two['rss_procs']} processes "
            f"(sampled); ru_maxrss bench process {self_max:.3f} GiB (includes setup), largest child {child_max:.3f} GiB"
        )
        print(
            f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end "
            f"(shared with other work: figures are lower bounds); bench took {time.perf_counter() - started:.0f} s"
        )
        print(f"peak_rss_gib_100k: {two['rss_peak'] / 2**30:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
