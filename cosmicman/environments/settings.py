"""Settings of the flywheel's automation that every environment reads from the process environment.

``python -m cosmicman.cli run`` sets them for the daemon it starts; ``dagster dev`` / ``dagster-daemon`` read
them from their own environment. Each has a default that fits its environment (``COSMICMAN_ENV``).

- ``COSMICMAN_VARIANTS``: the training partitions (``daring_unet`` / ``evaluation``), comma-separated names
  from ``cosmicman.model.train.variants.VARIANTS``; every variant when unset.
- ``COSMICMAN_SENSOR_INTERVAL_S``: the minimum interval of every sensor and of the automation sensor.
- ``COSMICMAN_NEW_IMAGES_PER_VERSION``: how many newly annotated images make a new ``cosmicman_hq`` version.
- ``COSMICMAN_SHARD_SAMPLES`` / ``COSMICMAN_SHARD_MB``: a ``cosmicman_hq`` shard closes at that many samples
  or once it holds that many MiB (``COSMICMAN_SHARD_MB=0``: no byte limit).
- ``COSMICMAN_MIN_LIVE_PERCENT``: a shard whose live share in a new version falls under this percentage has
  its live samples written anew (compaction).
- ``COSMICMAN_BUILD_WORKERS``: processes that read and prepare the samples a ``cosmicman_hq`` build writes
  (default: one per CPU core; a build writing fewer than 2,048 samples prepares them in its own process).
- ``COSMICMAN_SOURCING_CONCURRENCY``: how many sourcing batches the pool sensor keeps in flight at once (added and
  not yet filtered). The ``sourcing`` concurrency pool bounds how many of their ``raw_images`` steps run at once.
"""

from __future__ import annotations

import os

from cosmicman.model.train.variants import VARIANTS

VARIANTS_VAR = "COSMICMAN_VARIANTS"
SENSOR_INTERVAL_VAR = "COSMICMAN_SENSOR_INTERVAL_S"
NEW_IMAGES_VAR = "COSMICMAN_NEW_IMAGES_PER_VERSION"
SHARD_SAMPLES_VAR = "COSMICMAN_SHARD_SAMPLES"
SHARD_MB_VAR = "COSMICMAN_SHARD_MB"
MIN_LIVE_PERCENT_VAR = "COSMICMAN_MIN_LIVE_PERCENT"
SOURCING_CONCURRENCY_VAR = "COSMICMAN_SOURCING_CONCURRENCY"
BUILD_WORKERS_VAR = "COSMICMAN_BUILD_WORKERS"

# a local turn hands over between ~15 runs: each wait for a tick adds to it. Elsewhere a tick may read a
# large pool's listing, so it runs less often.
SENSOR_INTERVAL_S = {"local": 5, "s3": 30, "k8s": 30}
# the local pool holds ~100 kept images: a third of it is worth a new version; a production pool is larger
NEW_IMAGES_PER_VERSION = {"local": 32, "s3": 1000, "k8s": 1000}
# the local pool's ~100 images make a few small shards, so sharing and compaction show; a production shard is
# the WebDataset norm of a few hundred MB (the sample cap only bounds a shard's index)
SHARD_SAMPLES = {"local": 64, "s3": 100_000, "k8s": 100_000}
SHARD_MB = {"local": 0, "s3": 512, "k8s": 512}
MIN_LIVE_PERCENT = 50
# the embedded default runs two runs at once on two cores, and its turns count batches: one batch at a time. A
# cluster fetches and checks batches side by side (the sourcing lock keeps admission one at a time).
SOURCING_CONCURRENCY = {"local": 1, "s3": 2, "k8s": 4}


def _environment() -> str:
    return os.environ.get("COSMICMAN_ENV", "local")


def positive_int(var: str, default: int) -> int:
    """``var`` as a whole number of at least 1 (``default`` when unset); anything else is an error."""
    raw = os.environ.get(var)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{var}={raw!r} is not a positive whole number")
    return int(raw)


def parse_variants(names: str) -> list[str]:
    """``"baseline,hola"`` -> ``["baseline", "hola"]``, in ``VARIANTS`` order; unknown or no names are an error."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown or not wanted:
        raise ValueError(f"{VARIANTS_VAR}={names!r}: unknown training variants {unknown}; choose from {list(VARIANTS)}")
    return [v for v in VARIANTS if v in wanted]


def training_variants() -> list[str]:
    """The variants the environment trains and evaluates (``COSMICMAN_VARIANTS``, default all)."""
    raw = os.environ.get(VARIANTS_VAR)
    return list(VARIANTS) if raw is None else parse_variants(raw)


def sensor_interval_s() -> int:
    """Minimum seconds between two ticks of a sensor (``COSMICMAN_SENSOR_INTERVAL_S``)."""
    return positive_int(SENSOR_INTERVAL_VAR, SENSOR_INTERVAL_S.get(_environment(), 30))


def new_images_per_version() -> int:
    """Newly annotated images that make a new dataset version (``COSMICMAN_NEW_IMAGES_PER_VERSION``)."""
    return positive_int(NEW_IMAGES_VAR, NEW_IMAGES_PER_VERSION.get(_environment(), 1000))


def shard_policy_settings() -> tuple[int, int | None, float]:
    """(samples per shard, max shard bytes or None, min live fraction) of ``cosmicman_hq``'s shards."""
    env = _environment()
    samples = positive_int(SHARD_SAMPLES_VAR, SHARD_SAMPLES.get(env, 100_000))
    raw_mb = os.environ.get(SHARD_MB_VAR)
    mb = SHARD_MB.get(env, 512) if raw_mb is None else (0 if raw_mb.strip() == "0" else positive_int(SHARD_MB_VAR, 1))
    percent = positive_int(MIN_LIVE_PERCENT_VAR, MIN_LIVE_PERCENT)
    if percent > 100:
        raise ValueError(f"{MIN_LIVE_PERCENT_VAR}={percent} is not a percentage (1..100)")
    return samples, (mb << 20) if mb else None, percent / 100


def sourcing_concurrency() -> int:
    """Sourcing batches the pool sensor keeps in flight at once (``COSMICMAN_SOURCING_CONCURRENCY``)."""
    return positive_int(SOURCING_CONCURRENCY_VAR, SOURCING_CONCURRENCY.get(_environment(), 1))


def build_workers() -> int:
    """Processes that prepare the samples a ``cosmicman_hq`` build writes (``COSMICMAN_BUILD_WORKERS``, default
    one per CPU core)."""
    return positive_int(BUILD_WORKERS_VAR, os.cpu_count() or 1)
