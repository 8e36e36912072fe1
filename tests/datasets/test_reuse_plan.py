"""The reuse plan's joins run one bucket of image keys at a time: every row lands in exactly one bucket, the
bucket of its key's top bits, and a pool sample meets its known copies there."""

import polars as pl

from cosmicman.datasets.reuse_plan import BUCKET_BITS, KEY_BITS, key_buckets, plan_reuse, sorted_keys

EDGE = 1 << (KEY_BITS - BUCKET_BITS)  # the first key of bucket 1


def test_every_key_lands_in_the_bucket_of_its_top_bits_edges_included():
    keys = [0, EDGE - 1, EDGE, 2 * EDGE - 1, 2 * EDGE, (1 << KEY_BITS) - 1]
    frame = sorted_keys(pl.DataFrame({"s0": keys[::-1], "row": range(len(keys))}))
    buckets = [part["s0"].to_list() for (part,) in key_buckets(frame)]
    assert len(buckets) == 1 << BUCKET_BITS
    assert buckets[0] == [0, EDGE - 1]
    assert buckets[1] == [EDGE, 2 * EDGE - 1]
    assert buckets[2] == [2 * EDGE]
    assert buckets[-1] == [(1 << KEY_BITS) - 1]
    assert sum(map(len, buckets)) == len(keys)


def test_the_plan_keeps_the_first_copy_and_compacts_a_shard_holding_another_copy():
    # shard 0 holds the chosen copies; shard 1 one live sample (1 of 2, at the live share) and an old copy of
    # image EDGE (relabelled since): compacted, its live sample written anew with the new image 2*EDGE. Keys sit
    # on bucket edges, so a bucket off by one would split a sample from its copy.
    known = sorted_keys(
        pl.DataFrame(
            {"s0": [EDGE - 1, EDGE, EDGE, 5], "c0": [1, 2, 9, 3], "shard_i": [0, 0, 1, 1]},
            schema={"s0": pl.Int64, "c0": pl.Int64, "shard_i": pl.UInt32},
        )
    )
    pool = sorted_keys(
        pl.DataFrame(
            {"s0": [EDGE - 1, EDGE, 5, 2 * EDGE], "c0": [1, 2, 3, 4], "batch_i": [0, 0, 0, 1]},
            schema={"s0": pl.Int64, "c0": pl.Int64, "batch_i": pl.UInt32},
        )
    )
    shards = pl.DataFrame(
        {"shard_i": [0, 1], "n_samples": [2, 2]}, schema={"shard_i": pl.UInt32, "n_samples": pl.Int64}
    )
    plan = plan_reuse(pool, known, shards, min_live_fraction=0.5)
    assert plan.catalogue.sort("shard_i").select("n_live", "compacted").rows() == [(2, False), (1, True)]
    assert plan.kept["shard_i"].to_list() == [0]
    assert plan.reused == 2
    assert plan.to_write.select("s0", "batch_i").rows() == [(5, 0), (2 * EDGE, 1)]  # in batch order
    assert plan.dead.is_empty()
    # under a live share of 1.0 shard 0 stays (2 of 2 live); at 2 of 3 it would be compacted
    assert plan_reuse(pool, known, shards, min_live_fraction=1.0).kept["shard_i"].to_list() == [0]
    three = shards.with_columns(
        pl.when(pl.col("shard_i") == 0).then(3).otherwise(pl.col("n_samples")).alias("n_samples")
    )
    assert plan_reuse(pool, known, three, min_live_fraction=1.0).kept.is_empty()
