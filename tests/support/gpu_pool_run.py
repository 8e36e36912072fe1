"""One run of a backfill, in its own process as a run worker is: materializes one partition of ``daring_unet``
on the instance at $DAGSTER_HOME with a stand-in launcher that holds its "GPU pod" for a while and appends the
interval (wall clock) to a file. Used by tests/assets/test_gpu_pools.py:

    python -m tests.support.gpu_pool_run STORE_URL VARIANT INTERVALS_FILE POD_SECONDS
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import dagster as dg

import cosmicman.assets.training as training_assets
from cosmicman.core.keys import TRAINING_RUN_FILE
from cosmicman.core.store import Store
from cosmicman.resources.launchers import TrainingLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource


class TimedTrainer(TrainingLauncher):
    """Holds its pod for ``seconds``, records the interval, then publishes a run record as the trainer does."""

    intervals_file: str
    seconds: float

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        start = time.time()
        time.sleep(self.seconds)
        with open(self.intervals_file, "a") as f:
            f.write(json.dumps([start, time.time()]) + "\n")
        record = {
            "config": config,
            "data": {"shards": config["shards"]},
            "code_version": "test",
            "loss_history": [{"step": 1, "loss": 1.0, "noise": 0.9, "hola": 0.1}],
            "metrics": {
                "loss_first": 1.0,
                "loss_last": 0.5,
                "noise_loss_last": 0.45,
                "hola_loss_last": 0.05,
                "steps": 1,
                "seconds": self.seconds,
                "seconds_per_step": self.seconds,
            },
        }
        Store(config["output_url"]).write_json(TRAINING_RUN_FILE, record)
        return dg.MaterializeResult()


def run_variant(
    instance: dg.DagsterInstance, store_url: str, variant: str, intervals_file: str, seconds: float
) -> bool:
    # the dataset version is the test's own: its shards and lineage are not what is tested
    training_assets.shard_urls = lambda *a, **k: ["/data/shard-000000.tar"]  # type: ignore[assignment]
    training_assets.excluded_samples = lambda *a, **k: []  # type: ignore[assignment]
    training_assets._lineage = lambda store, key: dg.MetadataValue.json({"model": key})  # type: ignore[assignment]
    result = dg.materialize(
        [training_assets.daring_unet],
        instance=instance,
        partition_key=variant,
        resources={
            "object_store": ObjectStoreResource(url=store_url),
            "training": TrainingResource(overrides={"pretrained": "/models/base-sd"}),
            "training_launcher": TimedTrainer(intervals_file=intervals_file, seconds=seconds),
        },
        raise_on_error=False,
    )
    return result.success


if __name__ == "__main__":
    store_url, variant, intervals_file, seconds = sys.argv[1:]
    sys.exit(0 if run_variant(dg.DagsterInstance.get(), store_url, variant, intervals_file, float(seconds)) else 1)
