"""Pool-sensor bench: one tick of ``pool_threshold_sensor`` over a pool of 6 million filtered rows.

    .venv/bin/python bench/pool_sensor.py            (from the repo root)

600 sourcing batches of 10,000 rows are registered as dynamic partitions of a real (SQLite) Dagster
instance and their counts recorded with ``record_batch``, as ``filtered_images`` does after each batch;
the sensor is then evaluated as the daemon would (``build_sensor_context`` with the instance and the
code location's resources). Printed: the cost of recording a batch into a pool that size (what each
filtering run pays) and the median / worst of several ticks, in both of the sensor's outcomes (pool under
the threshold: source a batch; at or above it: skip).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from cosmicman.assets.common import sourcing_batches  # noqa: E402
from cosmicman.core.store import Store  # noqa: E402
from cosmicman.environments.simulated_data import SimulatedSourcingResource  # noqa: E402
from cosmicman.jobs import pool_threshold_sensor  # noqa: E402
from cosmicman.resources.storage import ObjectStoreResource  # noqa: E402
from cosmicman.sourcing.pool import record_batch  # noqa: E402

BATCHES = 600
ROWS_PER_BATCH = 10_000
KEPT_PER_BATCH = 3_700
TICKS = 7


def ticks(instance: dg.DagsterInstance, resources: dict) -> tuple[list[float], dg.SensorResult]:
    times = []
    for _ in range(TICKS):
        started = time.perf_counter()
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = pool_threshold_sensor(context)
        times.append(time.perf_counter() - started)
    return times, result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cosmicman-sensor-bench-"))
    try:
        store_url = str(work / "store")
        store = Store(store_url)
        batches = [f"batch-{i:05d}" for i in range(BATCHES)]
        (work / "dagster").mkdir()
        with dg.DagsterInstance.local_temp(
            str(work / "dagster"), overrides={"telemetry": {"enabled": False}}
        ) as instance:
            started = time.perf_counter()
            instance.add_dynamic_partitions(sourcing_batches.name, batches)
            # the sensor waits for the filters' fake-person head; the pool it then reads is the bench's
            instance.report_runless_asset_event(dg.AssetMaterialization("fake_person_classifier"))
            record_s = []
            for batch in batches:
                t = time.perf_counter()
                record_batch(store, batch, raw=ROWS_PER_BATCH, kept=KEPT_PER_BATCH)
                record_s.append(time.perf_counter() - t)
            print(
                f"setup: {BATCHES} partitions and {BATCHES} recorded batches ({BATCHES * ROWS_PER_BATCH:,} rows, "
                f"{BATCHES * KEPT_PER_BATCH:,} kept) in {time.perf_counter() - started:.1f} s; recording a batch "
                f"costs {1000 * record_s[0]:.1f} ms into an empty pool, {1000 * statistics.median(record_s[-50:]):.1f} ms "
                f"into a pool of {BATCHES - 50}-{BATCHES} batches"
            )

            results = {}
            for name, threshold in (
                ("under the threshold", BATCHES * KEPT_PER_BATCH + 1),
                ("at the threshold", BATCHES * KEPT_PER_BATCH),
            ):
                resources = {
                    "object_store": ObjectStoreResource(url=store_url),
                    "sourcing": SimulatedSourcingResource(pool_threshold=threshold),
                }
                times, result = ticks(instance, resources)
                results[name] = times
                outcome = (
                    f"sources {result.run_requests[0].partition_key}"
                    if result.run_requests
                    else f"skips: {result.skip_reason.skip_message}"
                )
                print(
                    f"tick {name}: median {1000 * statistics.median(times):.1f} ms, worst {1000 * max(times):.1f} ms "
                    f"over {TICKS} ticks; {outcome}"
                )
        worst = max(max(t) for t in results.values())
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared with other work)")
        print(f"sensor_tick_s_6m: {worst:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
