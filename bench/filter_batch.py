"""Filtering bench: the ``filtered_images`` graph asset, run as users run it, on two mixes of images.

    .venv/bin/python bench/filter_batch.py            (from the repo root; 10-20 minutes on 2 cores, by their load)
    .venv/bin/python bench/filter_batch.py 200 2000   (fewer records while developing: realistic, memory)

1. Speed, on the realistic mix (REALISTIC_RECORDS records): synthetic-world renders at 640x1280, the paper's
   size minimum, with the size rule at its production 640 / 1280 (the face rule scaled with the renders:
   104 px), in a fixed mix per 100 (REALISTIC_MIX) where 40 % of the records pass the cheap checks (decode,
   size, fake-person head, quality) and reach the person and face detectors. The share that reached each
   stage is counted from the scores the chain wrote for each record (a record reached the person detector
   when it has a person count), and the bench fails when under 30 % reached the detectors. The same
   records are filtered as one shard (one filter step) and as two shards (two steps side by side, the
   multiprocess executor at max_concurrent 2 on this machine's cores): ``filter_parallel_speedup`` is the
   one-shard filter time over the two-shard one (first shard step start to last shard step end), printed
   with the load average, since the machine is shared, and with what the machine gave two processes of a
   pure CPU loop just before and after (the same ratio, the limit any two shards can reach at that moment).
   Each shard step's CPU time (its process, sampled) gives CPU-ms per image and the cores the shards
   obtained: equal CPU per image in both runs means the shards add no work of their own. The two runs'
   tables must be equal.
2. Memory, on the cheap mix (MEMORY_RECORDS = 100,000 records): renders scaled to 0.4 (128x256), the
   thresholds scaled alike, each record made distinct by a stamped record number, mostly early rejections
   (0.3 % reach the detectors: at ~0.2 s per detector image, 100k realistic records would take hours on two
   cores, and the memory a shard holds grows with its rows, not with how far they get); filtered as two
   shards in parallel. ``peak_rss_gib_100k`` is the peak RSS of the whole process tree (psutil, sampled
   every 0.1 s, summed over the bench process and all its descendants: shared pages count once per process,
   so the sum over-counts).

Nothing here sets thread counts: the filter worker (``cosmicman.filtering.worker``) runs each shard on one
OpenCV / torch thread, as it does for users.
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
from dataclasses import dataclass
from pathlib import Path

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
from cosmicman.filtering.worker import compute_threads  # noqa: E402
from cosmicman.resources.filters import FAKE_HEAD_KEY, FilterResource  # noqa: E402
from cosmicman.resources.storage import ObjectStoreResource  # noqa: E402
from cosmicman.simulation.world import SyntheticWorld  # noqa: E402

REALISTIC_RECORDS = 600
MEMORY_RECORDS = 100_000
MIN_DETECTOR_SHARE = 0.30
BASES_PER_CASE = 8
DETECTOR_CASES = ("kept", "no_person", "many_people", "small_face")
BATCH = "batch-00000"
# (stage, the score a record has once the chain ran that stage on it)
STAGE_SCORES = [
    ("decode, size rule", "score_width"),
    ("fake-person head", "score_fake_score"),
    ("quality", "score_quality"),
    ("person detector", "score_n_people"),
    ("face detector", "score_n_faces"),
]


@dataclass(frozen=True)
class Mix:
    """A batch of records: world renders of ``width`` x ``height`` resized by ``scale``, in the proportions
    of ``cases`` (records per ``sum(cases)`` consecutive records), through a chain with these thresholds."""

    name: str
    width: int
    height: int
    scale: float
    cases: dict[str, int]
    min_short_side: int
    min_long_side: int
    min_face_px: int

    def filter_resource(self) -> FilterResource:
        return FilterResource(
            min_short_side=self.min_short_side, min_long_side=self.min_long_side, min_face_px=self.min_face_px
        )


PAPER = FilterConfig.production()
# 40 % reach the detectors; the face rule doubles the 320x640 default (52 px) with the renders
REALISTIC_MIX = Mix(
    "realistic",
    640,
    1280,
    1.0,
    {
        "corrupt": 2,
        "too_small": 28,
        "fake_person": 10,
        "low_quality": 20,
        "kept": 28,
        "no_person": 4,
        "many_people": 4,
        "small_face": 4,
    },
    PAPER.min_short_side,
    PAPER.min_long_side,
    2 * FilterConfig().min_face_px,
)
_LOCAL = FilterConfig()
# 0.3 % reach the detectors: a memory run of early rejections
MEMORY_MIX = Mix(
    "memory",
    320,
    640,
    0.4,
    {
        "corrupt": 60,
        "too_small": 1100,
        "fake_person": 300,
        "low_quality": 534,
        "kept": 3,
        "no_person": 1,
        "many_people": 1,
        "small_face": 1,
    },
    int(_LOCAL.min_short_side * 0.4),
    int(_LOCAL.min_long_side * 0.4),
    int(_LOCAL.min_face_px * 0.4),
)
MIXES = {m.name: m for m in (REALISTIC_MIX, MEMORY_MIX)}


def case_schedule(mix: Mix) -> list[str]:
    """The cases of ``sum(mix.cases)`` consecutive records, shuffled once: every such slice has the mix."""
    slots = [case for case, n in mix.cases.items() for _ in range(n)]
    np.random.default_rng(7).shuffle(slots)
    return slots


def _render(world: SyntheticWorld, mix: Mix, index: int, case: str) -> np.ndarray:
    """A render of ``case`` (corrupt records start from a kept render and are cut short when written)."""
    img = decode_image(world.sample(index, "kept" if case == "corrupt" else case).image_bytes)
    if mix.scale != 1.0:
        img = img.resize((max(1, round(img.width * mix.scale)), max(1, round(img.height * mix.scale))), Image.LANCZOS)
    return np.asarray(img.convert("RGB"))


def record_bases(mix: Mix, chain: FilterChain, per_case: int = BASES_PER_CASE) -> dict[str, list[np.ndarray]]:
    """Renders the chain decides as their case (some blurred renders look sharp, and the detectors miss a
    few people), so the mix of decisions, and of the work done, is the mix exactly."""
    world = SyntheticWorld(seed=77, width=mix.width, height=mix.height)
    bases: dict[str, list[np.ndarray]] = {}
    for n, case in enumerate(mix.cases):
        bases[case] = []
        for i in range(20 * per_case):
            if len(bases[case]) == per_case:
                break
            render = _render(world, mix, 1000 * n + i, case)
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


def write_batch(store: Store, mix: Mix, bases: dict, count: int, workers: int = 2) -> None:
    """Blobs written straight into the store's layout (setup, not measured) and the batch's raw table."""
    for h in range(256):
        os.makedirs(os.path.join(store.root, "blobs", f"{h:02x}"), exist_ok=True)
    cases = case_schedule(mix)
    starts = list(range(0, count, 5000))
    stops = [min(s + 5000, count) for s in starts]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(bases,)) as pool:
        parts = pool.map(_write_records, [store.root] * len(starts), [cases] * len(starts), starts, stops)
        rows = [r for part in parts for r in part]
    raw = pl.DataFrame(rows, schema={"sha256": pl.Utf8, "blob_key": pl.Utf8, "ext": pl.Utf8}, orient="row")
    assert raw["sha256"].n_unique() == count, "records must be distinct"
    store.write_table(table_key("raw_images", BATCH), raw)


def train_head(mix: Mix) -> bytes:
    """The fake-person head on renders of the mix's size (not the records' own): cartoons against every
    photographic case."""
    world = SyntheticWorld(seed=78, width=mix.width, height=mix.height)
    photographic = ("kept", "low_quality", "no_person", "many_people", "small_face")
    real = [
        Image.fromarray(_render(world, mix, 1000 * n + i, c)) for n, c in enumerate(photographic) for i in range(12)
    ]
    fake = [Image.fromarray(_render(world, mix, 9000 + i, "fake_person")) for i in range(12)]
    head, metrics = train_fake_person_head(real + fake, [0] * len(real) + [1] * len(fake))
    print(
        f"{mix.name} mix: fake-person head on {len(real) + len(fake)} renders, val accuracy {metrics['val_accuracy']:.3f}"
    )
    return head.to_bytes()


def stage_speeds(bases: dict[str, list[np.ndarray]], chain: FilterChain) -> None:
    """Throughput of the chain in this process, by how far a record gets."""
    groups = {c: [c] for c in ("corrupt", "too_small", "fake_person", "low_quality")}
    groups["detectors"] = list(DETECTOR_CASES)
    print("chain throughput by how far a record gets (this process, one thread):")
    for name, cases in groups.items():
        n = 8 if name == "detectors" else 40
        datas = [record_bytes(bases, cases[i % len(cases)], 10_000_000 + i) for i in range(n)]
        t = time.perf_counter()
        with compute_threads(1):  # as in a shard
            for d in datas:
                chain.process(d)
        dt = time.perf_counter() - t
        print(f"  {name:<12} {n / dt:8.1f} images/s  ({1000 * dt / n:.1f} ms each)")


class TreeSampler:
    """Peak of RSS summed over this process and all its descendants, and the CPU time of the descendants
    (each one's last sample), sampled in a thread."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s, self.peak, self.procs_at_peak = every_s, 0, 0
        self.child_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total, n = me.memory_info().rss, 1
            for p in me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                    cpu = p.cpu_times()
                    self.child_cpu[p.pid] = cpu.user + cpu.system
                    n += 1
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.procs_at_peak = total, n
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_job() -> dg.JobDefinition:
    """Rebuilt in every step process (the multiprocess executor reconstructs the job by this function)."""
    mix = MIXES[os.environ["BENCH_MIX"]]
    defs = dg.Definitions(
        assets=[
            dg.AssetSpec("raw_images", partitions_def=sourcing_batches),
            dg.AssetSpec("fake_person_classifier"),
            build_filtered_images(),
        ],
        jobs=[dg.define_asset_job("bench_filtered_images", selection=["filtered_images"])],
        resources={
            "object_store": ObjectStoreResource(url=os.environ["BENCH_STORE"]),
            "filters": mix.filter_resource(),
        },
    )
    return defs.resolve_job_def("bench_filtered_images")


def run_batch(instance: dg.DagsterInstance, shard_rows: int, workers: int) -> dict:
    """The batch through the ``filtered_images`` graph; the shard steps' times from the run's events."""
    config = {
        "ops": {"filtered_images": {"ops": {"plan_filter_shards": {"config": {"shard_rows": shard_rows}}}}},
        "execution": {"config": {"multiprocess": {"max_concurrent": workers}}},
    }
    load_before, own_cpu_before = os.getloadavg()[0], time.process_time()
    started = time.perf_counter()
    with (
        TreeSampler() as tree,
        dg.execute_job(
            dg.reconstructable(bench_job), instance, run_config=config, tags={"dagster/partition": BATCH}
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
            steps[ev.step_key]["pid"] = ev.pid
    shard_steps = [v for k, v in steps.items() if ".filter_shard[" in k]
    assert len(shard_steps) == workers, f"expected {workers} shard steps, got {sorted(steps)}"
    return {
        "wall": wall,
        "shard_steps": [v["STEP_SUCCESS"] - v["STEP_START"] for v in shard_steps],
        "filter_span": max(v["STEP_SUCCESS"] for v in shard_steps) - min(v["STEP_START"] for v in shard_steps),
        # each shard step process's CPU time, its start-up (imports) included
        "shard_cpu": [tree.child_cpu.get(int(v["pid"]), float("nan")) for v in shard_steps],
        "rss_peak": tree.peak,
        "rss_procs": tree.procs_at_peak,
        "child_cpu": sum(tree.child_cpu.values()),
        "own_cpu": time.process_time() - own_cpu_before,
        "load": (load_before, os.getloadavg()[0]),
    }


def _spin(n: int) -> float:
    """A pure CPU loop; its CPU seconds."""
    cpu = time.process_time()
    x = 0
    for i in range(n):
        x += i * i
    return time.process_time() - cpu


def machine_parallel_speedup(n: int = 20_000_000) -> float:
    """What this machine gives two processes now: a CPU loop in one process, then the same loop split over two
    processes side by side, one time over the other (2.00 on two free cores; other work on the machine
    lowers it, for the shards alike)."""
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_spin, [1000, 1000]))  # both workers started before the clock runs
        t = time.perf_counter()
        pool.submit(_spin, n).result()
        one = time.perf_counter() - t
        t = time.perf_counter()
        list(pool.map(_spin, [n // 2, n // 2]))
        return one / (time.perf_counter() - t)


def stage_shares(table: pl.DataFrame) -> list[tuple[str, float]]:
    """The share of records each stage ran on, from the scores the chain wrote for each record."""
    return [
        (stage, (table[col].is_not_null().sum() if col in table.columns else 0) / len(table))
        for stage, col in STAGE_SCORES
    ]


def print_shares(mix: Mix, table: pl.DataFrame) -> float:
    """Prints the share reaching each stage and the decisions; returns the share reaching the detectors."""
    print(f"share of the {mix.name} batch ({len(table)} records) reaching each stage (from the chain's scores):")
    shares = stage_shares(table)
    for stage, share in shares:
        print(f"  {stage:<17} {100 * share:6.2f} %")
    print(f"  decisions: {dict(table.group_by('decision').len().sort('decision').iter_rows())}")
    return dict(shares)["person detector"]


def prepare(work: Path, mix: Mix, records: int) -> Store:
    """A store holding the mix's fake-person head and a batch of ``records`` distinct records."""
    store = Store(str(work / f"{mix.name}-store"))
    store.write_bytes(FAKE_HEAD_KEY, train_head(mix))
    chain = mix.filter_resource().chain(store)
    chain.setup()
    bases = record_bases(mix, chain)
    if mix is REALISTIC_MIX:
        stage_speeds(bases, chain)
    t = time.perf_counter()
    write_batch(store, mix, bases, records)
    mib = sum(f.stat().st_size for f in (Path(store.root) / "blobs").rglob("*.jpg")) / 2**20
    print(f"setup: {records} distinct {mix.name} records written in {time.perf_counter() - t:.0f} s ({mib:.0f} MiB)")
    return store


def use_mix(work: Path, mix: Mix) -> None:
    """Step processes inherit these when they start: which store, which thresholds."""
    os.environ.update(BENCH_MIX=mix.name, BENCH_STORE=str(work / f"{mix.name}-store"))


def describe(label: str, records: int, run: dict) -> str:
    steps = ", ".join(f"{s:.1f} s" for s in run["shard_steps"])
    cpu = ", ".join(f"{c:.1f} s" for c in run["shard_cpu"])
    return (
        f"{label}: shard steps {steps} (CPU of their processes {cpu}), filter span {run['filter_span']:.1f} s "
        f"({records / run['filter_span']:.1f} images/s, {1000 * sum(run['shard_cpu']) / records:.0f} CPU-ms per image, "
        f"{sum(run['shard_cpu']) / run['filter_span']:.2f} cores obtained); whole run {run['wall']:.1f} s; "
        f"this orchestrating process {run['own_cpu']:.1f} CPU-s; load average {run['load'][0]:.1f} -> {run['load'][1]:.1f}"
    )


def main(realistic_records: int, memory_records: int) -> None:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cosmicman-filter-bench-"))
    try:
        realistic = prepare(work, REALISTIC_MIX, realistic_records)
        memory = prepare(work, MEMORY_MIX, memory_records)
        (work / "dagster").mkdir()
        with dg.DagsterInstance.local_temp(
            str(work / "dagster"), overrides={"telemetry": {"enabled": False}}
        ) as instance:
            instance.add_dynamic_partitions(sourcing_batches.name, [BATCH])
            use_mix(work, REALISTIC_MIX)
            ceiling = [machine_parallel_speedup()]
            one = run_batch(instance, shard_rows=realistic_records, workers=1)
            one_table = realistic.read_table(table_key("filtered_images", BATCH))
            two = run_batch(instance, shard_rows=(realistic_records + 1) // 2, workers=2)
            two_table = realistic.read_table(table_key("filtered_images", BATCH))
            ceiling.append(machine_parallel_speedup())
            use_mix(work, MEMORY_MIX)
            mem = run_batch(instance, shard_rows=(memory_records + 1) // 2, workers=2)
            mem_table = memory.read_table(table_key("filtered_images", BATCH))

        print()
        detector_share = print_shares(REALISTIC_MIX, two_table)
        if detector_share < MIN_DETECTOR_SHARE:
            raise SystemExit(
                f"only {100 * detector_share:.1f} % of the realistic batch reached the detectors "
                f"(at least {100 * MIN_DETECTOR_SHARE:.0f} % needed): the mix no longer measures the detectors"
            )
        assert len(one_table) == len(two_table) == realistic_records
        assert one_table.equals(two_table), "one shard and two shards decided differently"
        speedup = one["filter_span"] / two["filter_span"]
        print(describe(f"  one shard, {realistic_records} records", realistic_records, one))
        print(describe("  two shards side by side, the same records", realistic_records, two))
        print(
            f"  two shards vs one: x{speedup:.2f} (2.00 = perfect on two free cores); what the machine gave two "
            f"processes of a CPU loop: x{ceiling[0]:.2f} before the runs, x{ceiling[1]:.2f} after"
        )

        print()
        print_shares(MEMORY_MIX, mem_table)
        assert len(mem_table) == memory_records
        print(describe(f"  two shards of {(memory_records + 1) // 2} records", memory_records, mem))
        child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(
            f"  peak RSS: process tree {mem['rss_peak'] / 2**30:.3f} GiB over {mem['rss_procs']} processes (sampled); "
            f"largest child ru_maxrss {child_max:.3f} GiB"
        )
        load = os.getloadavg()
        print(
            f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end "
            f"(shared with other work); bench took {time.perf_counter() - started:.0f} s"
        )
        print(f"peak_rss_gib_100k: {mem['rss_peak'] / 2**30:.3f}  ({memory_records} records, memory mix)")
        print(
            f"filter_parallel_speedup: {speedup:.2f}  (realistic mix, {realistic_records} records, "
            f"{100 * detector_share:.0f} % reach the detectors; load average {one['load'][0]:.1f} at the start, "
            f"{two['load'][1]:.1f} at the end of the two runs; the machine's own two-process ratio "
            f"x{min(ceiling):.2f}-x{max(ceiling):.2f})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    counts = [int(a) for a in sys.argv[1:3]]
    main(*counts, *(REALISTIC_RECORDS, MEMORY_RECORDS)[len(counts) :])
