"""GPU concurrency pools: a backfill of every training variant on a real Dagster instance (one run per
partition, each in its own process as the backfill daemon's run workers are, all started together) never has
more ``daring_unet`` steps holding a GPU pod than the ``gpu_training`` pool allows.

The instance's dagster.yaml bounds the pool the way deploy/dagster.production.yaml and k8s/values.yaml do
(``concurrency: pools: default_limit``, op granularity). The training launcher is a stand-in
(tests/support/gpu_pool_run.py) that holds its "pod" for a while, records the interval and publishes the run
record the trainer would, so every run succeeds; the pool is enforced by Dagster's own executor and the
instance's concurrency slots. (Runs in threads of one process deadlock in the logging module's lock, so each
run is a process, as in production.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cosmicman.assets.evaluation import base_model_evaluation, evaluation
from cosmicman.assets.filtering import filter_shard
from cosmicman.assets.gpu_pools import ANNOTATION_POOL, EVALUATION_POOL, FILTER_POOL, K8S_CONFIG_TAG, TRAINING_POOL
from cosmicman.assets.pool_annotation import build_annotations
from cosmicman.assets.training import daring_unet
from cosmicman.core.keys import LATEST_DATASET_KEY
from cosmicman.core.store import Store
from cosmicman.model.train.variants import VARIANTS

REPO = Path(__file__).resolve().parents[2]
POOL_LIMIT = 2
# long enough that the run workers overlap although they start seconds apart on a loaded machine
POD_SECONDS = 6.0


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at the same instant)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_most_at_once_counts_overlaps():
    assert most_at_once([(0, 1), (1, 2)]) == 1
    assert most_at_once([(0, 2), (1, 3), (1.5, 4)]) == 3
    assert most_at_once([]) == 0


def test_gpu_steps_are_in_their_pools():
    assert daring_unet.op.pool == TRAINING_POOL
    assert evaluation.op.pool == EVALUATION_POOL and base_model_evaluation.op.pool == EVALUATION_POOL
    assert filter_shard.pool == FILTER_POOL
    assert build_annotations().op.pool == ANNOTATION_POOL  # one batch's annotation: the VLM on its GPU
    # the launching steps hold no GPU: their pods ask for a small, bounded share of a node
    from dagster_k8s.job import get_user_defined_k8s_config

    resources = get_user_defined_k8s_config(daring_unet.op.tags).container_config["resources"]
    assert K8S_CONFIG_TAG in evaluation.op.tags and K8S_CONFIG_TAG in base_model_evaluation.op.tags
    assert resources["requests"] == resources["limits"] and "nvidia.com/gpu" not in resources["limits"]


@pytest.mark.deploy  # seven run processes on a real instance: minutes on 2 cores (make test-deploy)
def test_backfill_of_all_variants_never_exceeds_the_gpu_pool(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    concurrency = {"pools": {"default_limit": POOL_LIMIT, "granularity": "op"}}
    (home / "dagster.yaml").write_text(yaml.safe_dump({"concurrency": concurrency, "telemetry": {"enabled": False}}))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits
    store = Store(str(tmp_path / "store"))
    store.write_json(LATEST_DATASET_KEY, {"version": "v0001"})
    intervals_file = tmp_path / "intervals.jsonl"
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.support.gpu_pool_run", store.url]
    workers = {
        v: subprocess.Popen(
            [*command, v, str(intervals_file), str(POD_SECONDS)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in VARIANTS
    }
    try:
        errors = {v: w.communicate(timeout=600)[1] for v, w in workers.items()}
    finally:
        for w in workers.values():
            if w.poll() is None:
                w.kill()
    assert {v: w.returncode for v, w in workers.items()} == dict.fromkeys(VARIANTS, 0), {
        v: e[-1500:] for v, e in errors.items() if workers[v].returncode
    }
    intervals = [tuple(json.loads(line)) for line in intervals_file.read_text().splitlines()]
    assert len(intervals) == len(VARIANTS)
    # never more than the pool allows, and the limit was reached: the runs did run side by side
    assert most_at_once(intervals) == POOL_LIMIT
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).claimed_slots == []
