"""Our sourcing of a LAION-style parquet against img2dataset, on the same local image server, in one run.

    .venv/bin/python bench/sourcing.py [--count 20000]

Set-up (cached, so a second run starts at once): img2dataset 1.47.0 in its own venv
(bench/img2dataset_venv.sh), ``--count`` distinct photo-like JPEGs (bench/make_jpegs.py) under
.cache/bench-sourcing/, and a parquet with LAION's columns (url, caption, width, height, license) whose
urls point at tests/support/image_server.py on 127.0.0.1, which serves the files from memory.

Each contender runs as a subprocess with its wall time and the peak RSS of its whole process tree (the
sum over the process and all its descendants, sampled every 50 ms). First each contender's candidate
settings run with resize off, alternating img2dataset and ours so that background load drifts over both
alike; each one's fastest is its figure and runs again with resize to 512.

Like with like: with resize off img2dataset still decodes and re-encodes every image (JPEG quality 95,
its default) and computes sha256; ours stores the original bytes after a full decode check, sha256 and
a perceptual hash. A third img2dataset run with --skip_reencode True (decode, keep the original bytes,
sha256: the closest it comes to ours) is reported for information. With --resize-to 512 both decode,
bring the smaller side down to 512 (keep ratio, never up: img2dataset's --resize_only_if_bigger True),
and store a quality-95 JPEG; ours also computes the perceptual hash. img2dataset runs without EXIF
extraction (ours extracts none), retries, wandb or header-directive checks, so it does only the work
ours does.

The limit: a bare decode loop over the same bytes (Pillow's full RGB decode, nothing else: what any consumer
of the pixels does), on as many processes as the machine has cores, each reading its share into memory first.
Ours entropy-decodes every JPEG in full (every coefficient of every component, so truncated and corrupt data
still fail, as tests/core/test_imageio.py checks against the RGB decode) but reconstructs only what its
perceptual hash needs: the luma plane at libjpeg's DCT reduction that keeps 128 pixels a side (the pool's
"luma-dct" phash scheme). Its check, sha256 and hash included, costs less than that bare decode (the
single-core line prints both); the fraction then shows what fetching, the worker pool and the writes add. Both contenders write their images to tmpfs (see DEFAULT_OUT_DIR; --out-dir to change).

The last lines, resize off:
  ratio_vs_img2dataset: ours / img2dataset images per second, whole command (start-up included);
  steady_ratio_vs_img2dataset: the same by each tool's own clock, start-up left out (img2dataset's logger,
    from the start of its downloading to its end; ours, the summary's outcomes_per_s, from the batch's first
    outcome to its last);
  fraction_of_decode_limit: ours by its own clock / the bare decode loop.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

BENCH = Path(__file__).resolve().parent
REPO_ROOT = BENCH.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH)]

from make_jpegs import CACHE_ROOT, JpegSet, jpeg_set

from cosmicman.core.imageio import check_image
from tests.support.image_server import ImageServer

IMG2DATASET_VENV = REPO_ROOT / ".venv-img2dataset"
RUNS = CACHE_ROOT / "runs"
# Where both contenders write their images. tmpfs by default: creating a file on this VM's ext4 costs about
# 0.57 ms of kernel time (0.07 ms on tmpfs, measured), which would bill the disk, not either pipeline, and
# img2dataset (three files an image) more than ours (one). --out-dir puts them on a disk instead.
DEFAULT_OUT_DIR = Path("/dev/shm/cosmicman-bench-sourcing") if Path("/dev/shm").is_dir() else RUNS
RESIZED_SIDE = 512
SAMPLE_EVERY_S = 0.05
RUN_TIMEOUT_S = 300
# Candidate settings for 2 cores. img2dataset downloads on `thread_count` threads per process and
# decodes/resizes on each process's main thread, one shard at a time: 2 processes match the cores, 4
# keep them busy while some processes wait on downloads or the GIL (the faster here in trial runs), and
# shards of 250 keep every process busy to the end.
IMG2DATASET_CANDIDATES = ({"processes_count": 2, "thread_count": 32}, {"processes_count": 4, "thread_count": 16})
IMG2DATASET_SHARD = 250
# wandb off, and no PyPI version check at albumentations' import (up to 2 s in every img2dataset process).
IMG2DATASET_ENV = {"WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
# Ours: check worker processes beside the fetching one. 3 beat 2 in both trial runs here (102 vs 84 and 80
# vs 76 img/s), so the bench spends its ten minutes on img2dataset's settings instead. One host serves
# everything, so ours may open as many connections to it as img2dataset's best setting has threads (4 x 16);
# its default per-host cap (16) is a politeness limit for real web hosts.
OURS_CANDIDATES = ({"workers": 3, "per_host": 64},)


@dataclass(frozen=True)
class Run:
    contender: str
    mode: str  # "resize off", "resize 512"
    settings: dict
    requested: int
    images: int  # stored successfully
    wall_s: float
    peak_rss_mb: float
    own_rate: float  # images/s by the contender's own clock, which starts after its start-up
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s


def measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` to completion (stdout and stderr to ``log``): wall seconds and peak tree RSS in MB."""
    peak = 0
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, **(env or {})}
        )
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):  # a child that exited meanwhile
                        rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass  # the root exited after poll()
            peak = max(peak, rss)
            if time.perf_counter() - start > RUN_TIMEOUT_S:
                for p in [*root.children(recursive=True), root]:  # img2dataset's workers too
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
            time.sleep(SAMPLE_EVERY_S)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} ... exited {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
    return wall, peak / 2**20


def write_parquet(jpegs: JpegSet, server: ImageServer, count: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = jpegs.names[:count]
    pq.write_table(
        pa.table(
            {
                "url": [server.url(f"img/{n}") for n in names],
                "caption": [f"a procedural photo-like scene number {i}" for i in range(count)],
                "width": jpegs.widths[:count],
                "height": jpegs.heights[:count],
                "license": ["?"] * count,
            }
        ),
        path,
        row_group_size=1000,
    )


def run_img2dataset(
    parquet: Path, count: int, resize: bool, settings: dict, out_dir: Path, skip_reencode: bool = False
) -> Run:
    out = out_dir / "img2dataset"
    shutil.rmtree(out, ignore_errors=True)
    resize_args = (
        ["--resize_mode", "keep_ratio", "--image_size", str(RESIZED_SIDE), "--resize_only_if_bigger", "True"]
        if resize
        else ["--resize_mode", "no"]
    )
    cmd = [
        str(IMG2DATASET_VENV / "bin" / "img2dataset"),
        "--url_list",
        str(parquet),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "files",
        "--output_folder",
        str(out),
        "--processes_count",
        str(settings["processes_count"]),
        "--thread_count",
        str(settings["thread_count"]),
        "--number_sample_per_shard",
        str(IMG2DATASET_SHARD),
        "--extract_exif",
        "False",
        "--retries",
        "0",
        "--timeout",
        "30",
        "--enable_wandb",
        "False",
        "--disallowed_header_directives",
        "[]",
        "--skip_reencode",
        str(skip_reencode),
        *resize_args,
    ]
    wall, peak = measured(cmd, RUNS / "img2dataset.log", IMG2DATASET_ENV)
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(out / "*_stats.json"))]
    successes = sum(s["successes"] for s in stats)
    shutil.rmtree(out, ignore_errors=True)
    # Its logger's last "total - ... images per sec: N" line: counted from the start of its downloading.
    own_rates = re.findall(r"^total .* images per sec: ([0-9.]+)", (RUNS / "img2dataset.log").read_text(), re.MULTILINE)
    return Run(
        "img2dataset",
        "resize 512" if resize else "resize off",
        settings,
        count,
        successes,
        wall,
        peak,
        float(own_rates[-1]) if own_rates else float("nan"),
        "skip_reencode" if skip_reencode else "",
    )


def run_ours(parquet: Path, count: int, resize: bool, settings: dict, out_dir: Path) -> Run:
    store = out_dir / "ours-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "cosmicman.sourcing.ingest",
        "--parquet",
        str(parquet),
        "--store",
        str(store),
        "--batch",
        "batch-00000",
        "--limit",
        str(count),
        "--workers",
        str(settings["workers"]),
        "--per-host",
        str(settings["per_host"]),
        *(["--resize-to", str(RESIZED_SIDE)] if resize else []),
    ]
    log = RUNS / "ours.log"
    wall, peak = measured(cmd, log)
    summary = json.loads(log.read_text().strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    stored = summary["counts"].get("stored", 0)
    return Run(
        "ours",
        "resize 512" if resize else "resize off",
        settings,
        count,
        stored,
        wall,
        peak,
        summary["outcomes_per_s"],
        json.dumps(summary["counts"], sort_keys=True),
    )


def check_image_ms(jpegs: JpegSet, count: int = 200) -> dict[str, float]:
    """Single-core figures for the per-file check on this set: median ms per image."""
    datas = [(jpegs.folder / n).read_bytes() for n in jpegs.names[:count]]
    check_image(datas[0])  # imports and first-call setup out of the figures

    def median_ms(fn) -> float:
        times = []
        for d in datas:
            start = time.perf_counter()
            fn(d)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    return {
        "decode only": median_ms(lambda d: Image.open(io.BytesIO(d)).load()),
        "check_image": median_ms(check_image),
        'check_image ("luma" scheme)': median_ms(lambda d: check_image(d, phash_scheme="luma")),
        f"check_image resize {RESIZED_SIDE}": median_ms(lambda d: check_image(d, RESIZED_SIDE)),
    }


def _decode_share(names: list[str], folder: Path, barrier, spans) -> None:
    """One process of the decode limit: its share read into memory, then decoded once the others are ready."""
    datas = [(folder / n).read_bytes() for n in names]
    barrier.wait()
    start = time.time()
    for data in datas:
        Image.open(io.BytesIO(data)).load()
    spans.put((start, time.time()))


def decode_limit(jpegs: JpegSet, count: int) -> float:
    """Images per second of a bare decode loop over the bench's bytes on every core (see the module doc)."""
    n = os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork")
    barrier, spans = ctx.Barrier(n), ctx.Queue()
    names = jpegs.names[:count]
    procs = [ctx.Process(target=_decode_share, args=(names[i::n], jpegs.folder, barrier, spans)) for i in range(n)]
    for proc in procs:
        proc.start()
    times = [spans.get(timeout=RUN_TIMEOUT_S) for _ in procs]
    for proc in procs:
        proc.join()
    return count / (max(end for _, end in times) - min(start for start, _ in times))


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.images_per_s)


def settings_text(settings: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000, help="distinct JPEGs, each run fetches them all")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where both contenders write images")
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()

    step = time.perf_counter()
    subprocess.run(["bash", str(BENCH / "img2dataset_venv.sh"), str(IMG2DATASET_VENV)], check=True)
    print(f"img2dataset venv ready in {time.perf_counter() - step:.1f} s ({IMG2DATASET_VENV})")
    step = time.perf_counter()
    jpegs = jpeg_set(args.count)
    print(
        f"{jpegs.count} distinct JPEGs ready in {time.perf_counter() - step:.1f} s: "
        f"{jpegs.total_bytes / jpegs.count / 1000:.0f} KB and {statistics.mean(jpegs.widths):.0f}x"
        f"{statistics.mean(jpegs.heights):.0f} px on average, 640x480..1024x768; closest pair's phash distance "
        f"{jpegs.min_phash_distance} bits (no near-duplicate radius up to 15 merges two)"
    )
    ms = check_image_ms(jpegs)
    print("single core, median per image: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    limit_before = decode_limit(jpegs, jpegs.count)
    print(f"decode limit: {limit_before:.0f} img/s (bare decode loop on {os.cpu_count()} processes)")

    RUNS.mkdir(parents=True, exist_ok=True)
    with ImageServer(jpegs.folder) as server:
        parquet = RUNS / "laion-style.parquet"
        write_parquet(jpegs, server, jpegs.count, parquet)
        # Resize off, every candidate setting of each contender, alternating so that background load
        # drifts over both alike; each contender's fastest setting is its figure and runs resize 512.
        off: list[Run] = []
        for i in range(max(len(IMG2DATASET_CANDIDATES), len(OURS_CANDIDATES))):
            if i < len(IMG2DATASET_CANDIDATES):
                off.append(run_img2dataset(parquet, jpegs.count, False, IMG2DATASET_CANDIDATES[i], args.out_dir))
            if i < len(OURS_CANDIDATES):
                off.append(run_ours(parquet, jpegs.count, False, OURS_CANDIDATES[i], args.out_dir))
        i2d_off = best([r for r in off if r.contender == "img2dataset"])
        ours_off = best([r for r in off if r.contender == "ours"])
        i2d_resized = run_img2dataset(parquet, jpegs.count, True, i2d_off.settings, args.out_dir)
        ours_resized = run_ours(parquet, jpegs.count, True, ours_off.settings, args.out_dir)
        i2d_skip = run_img2dataset(parquet, jpegs.count, False, i2d_off.settings, args.out_dir, skip_reencode=True)
        requests = server.stats()["requests"]
    shutil.rmtree(args.out_dir / "img2dataset", ignore_errors=True)
    runs = [*off, i2d_resized, ours_resized, i2d_skip]
    # measured before and after the contenders, so that a drift in background load shows
    limit_after = decode_limit(jpegs, jpegs.count)
    limit = max(limit_before, limit_after)

    print(
        f"\n{jpegs.count} images a run, same server, same machine, one run after another "
        f"(* the contender's best setting, resize off):"
    )
    print(
        f"  {'contender':<12} {'mode':<28} {'settings':<34} {'stored':>6} {'wall s':>7} {'img/s':>7} "
        f"{'own img/s':>9} {'peak RSS MB':>11}"
    )
    for r in runs:
        mode = r.mode + (" (skip_reencode)" if r.note == "skip_reencode" else "")
        star = "*" if r in (i2d_off, ours_off) else " "
        print(
            f" {star}{r.contender:<12} {mode:<28} {settings_text(r.settings):<34} {r.images:>6} {r.wall_s:>7.1f} "
            f"{r.images_per_s:>7.1f} {r.own_rate:>9.1f} {r.peak_rss_mb:>11.0f}"
        )
    for r in (ours_off, ours_resized):
        print(f"  ours {r.mode} outcomes: {r.note}")
    short = [r for r in runs if r.images < r.requested]
    if short:
        print("  WARNING: not every image stored by " + ", ".join(f"{r.contender} {r.mode}" for r in short))
    print(f"  the image server answered {requests} requests")

    ratio_off = ours_off.images_per_s / i2d_off.images_per_s
    ratio_resized = ours_resized.images_per_s / i2d_resized.images_per_s
    print(f"""
like with like:
  resize off: img2dataset decodes, re-encodes (JPEG q95) and sha256-hashes every image; ours entropy-decodes
    every JPEG in full into its luma plane, DCT-reduced to 128 pixels a side or more (other formats: RGB),
    applies EXIF orientation, sha256- and perceptual-hashes it, and stores the original bytes.
    img2dataset --skip_reencode True (decode, keep the original bytes, sha256; no perceptual hash), the
    closest it comes to ours: {i2d_skip.images_per_s:.1f} img/s, ours/that = {ours_off.images_per_s / i2d_skip.images_per_s:.2f}x.
  resize 512: both decode, shrink the smaller side to 512 (keep ratio, never upscale), store a JPEG q95;
    ours also perceptual-hashes (before resizing).
  img2dataset: no EXIF extraction, no retries, no wandb, no header-directive check; output_format files;
    {settings_text(i2d_off.settings)}, {IMG2DATASET_SHARD} images a shard (the best of {len(IMG2DATASET_CANDIDATES)} settings tried).
  ours: {settings_text(ours_off.settings)}.
  img/s: stored images over the wall time of the whole command, start-up included (the ratios use it);
    own img/s: by each tool's own clock, after its start-up (img2dataset's logger, our summary's outcomes_per_s).
  peak RSS: the sum over each contender's process tree (shared pages count once per process).
  output: both write their images under {args.out_dir}.

ratio resize off (ours/img2dataset images/s): {ratio_off:.2f}x   peak RSS {ours_off.peak_rss_mb:.0f} vs {i2d_off.peak_rss_mb:.0f} MB
ratio resize 512 (ours/img2dataset images/s): {ratio_resized:.2f}x   peak RSS {ours_resized.peak_rss_mb:.0f} vs {i2d_resized.peak_rss_mb:.0f} MB
by own clocks, start-up left out (what a run of millions would see): resize off {ours_off.own_rate / i2d_off.own_rate:.2f}x, resize 512 {ours_resized.own_rate / i2d_resized.own_rate:.2f}x
load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores; other work on the machine slows both alike)
decode limit (bare decode loop, {os.cpu_count()} processes): {limit_before:.0f} img/s before the runs, {limit_after:.0f} after; the higher is the limit
ours by its own clock, resize off: {ours_off.own_rate:.0f} img/s; img2dataset by its own: {i2d_off.own_rate:.0f} img/s
bench took {time.perf_counter() - started:.0f} s
ratio_vs_img2dataset: {ratio_off:.2f}
steady_ratio_vs_img2dataset: {ours_off.own_rate / i2d_off.own_rate:.2f}
fraction_of_decode_limit: {ours_off.own_rate / limit:.2f}""")


if __name__ == "__main__":
    main()
