"""Trainer features beyond the basic loop: aspect buckets with exact resume, the latent cache, SDXL,
and the rank split of the data stream. Tiny models on CPU."""

import json
from pathlib import Path

import pytest
import torch

from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.model.shards import ShardDataset
from tests.model.test_train import write_shards


def _quiet(msg: str) -> None:
    pass


def _base(urls, out, **kw):
    return {
        "shards": urls,
        "output_url": str(out),
        "resolution": 64,
        "batch_size": 2,
        "lr": 1e-3,
        "hola_map_factor": 8,
        "seed": 0,
        "shuffle_buffer": 4,
        "log_every": 1,
        "ema_decay": 0.0,
        **kw,
    }


def test_bucketed_training_resumes_exactly(tmp_path, mixed_urls):
    from cosmicman.model.checkpoints import list_checkpoints
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    kw = dict(buckets=True, bucket_step=8, checkpoint_url=str(tmp_path / "ckpt"))
    full = train(
        TrainConfig.from_dict(_base(mixed_urls, tmp_path / "full", steps=10, buckets=True, bucket_step=8)),
        log_fn=_quiet,
    )
    assert full["metrics"]["buckets"] == [[80, 48], [72, 56], [64, 64], [56, 72], [48, 80]]
    assert len(full["metrics"]["hola_layers"]) == 4
    train(TrainConfig.from_dict(_base(mixed_urls, tmp_path / "part", steps=6, checkpoint_every=6, **kw)), log_fn=_quiet)
    ((step, path),) = list_checkpoints(str(tmp_path / "ckpt"))
    mine = torch.load(Path(path) / "rank-00000.pt", weights_only=False)["data"]
    # samples of other buckets were waiting at step 6: resume restarts below them, skipping used ones
    assert step == 6 and mine["exclude"] and min(mine["exclude"]) > mine["start"]
    resumed = train(
        TrainConfig.from_dict(_base(mixed_urls, tmp_path / "resumed", steps=10, resume=True, **kw)), log_fn=_quiet
    )
    assert resumed["metrics"]["resumed_from_step"] == 6
    diff = max(
        abs(a[k] - b[k])
        for a, b in zip(full["loss_history"], resumed["loss_history"])
        for k in ("loss", "noise", "hola", "grad_norm")
    )
    assert diff <= 1e-5, diff


def test_latent_cache_matches_uncached_and_is_reused(tmp_path):
    import fsspec

    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    cache = "memory://cosmicman-cache-test/cache"
    plain = train(TrainConfig.from_dict(_base(urls, tmp_path / "plain", steps=4)), log_fn=_quiet)
    cached = train(TrainConfig.from_dict(_base(urls, tmp_path / "cached", steps=4, cache_url=cache)), log_fn=_quiet)
    assert cached["metrics"]["latent_cache"]["encoded_units"] == 2
    assert cached["metrics"]["latent_cache"]["samples"] == 8
    # the cached step samples the same posterior with the same draws: same losses up to float noise
    # (the cache encoded other batch compositions)
    diff = max(
        abs(a[k] - b[k])
        for a, b in zip(plain["loss_history"], cached["loss_history"])
        for k in ("loss", "noise", "hola")
    )
    assert diff <= 1e-4, diff
    again = train(TrainConfig.from_dict(_base(urls, tmp_path / "again", steps=2, cache_url=cache)), log_fn=_quiet)
    assert again["metrics"]["latent_cache"] == {
        "units": 2,
        "encoded_units": 0,
        "reused_units": 2,
        "samples": 0,
        "reused_samples": 8,
        "errors": 0,
    }
    assert again["loss_history"] == cached["loss_history"][:2]
    fs = fsspec.filesystem("memory")
    units = fs.find("/cosmicman-cache-test/cache")
    assert len(units) == 2 and all(u.endswith(".pt") for u in units)
    # another geometry is another fingerprint: nothing reused
    other = train(
        TrainConfig.from_dict(_base(urls, tmp_path / "other", steps=1, cache_url=cache, mask_resize="nearest")),
        log_fn=_quiet,
    )
    assert other["metrics"]["latent_cache"]["encoded_units"] == 2
    fs.rm("/cosmicman-cache-test", recursive=True)


def test_sdxl_tiny_trains_and_loads_in_the_sdxl_pipeline(tmp_path, mixed_urls):
    from diffusers import StableDiffusionXLPipeline

    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    out = tmp_path / "sdxl"
    rec = train(
        TrainConfig.from_dict(
            _base(mixed_urls, out, steps=3, family="sdxl", act_fn="mish", buckets=True, bucket_step=8)
        ),
        log_fn=_quiet,
    )
    assert rec["metrics"]["hola_layers"] and all(n.endswith("attn2") for n in rec["metrics"]["hola_layers"])
    assert all(h["hola"] > 0 for h in rec["loss_history"])
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    pipe = StableDiffusionXLPipeline.from_pretrained(str(out))
    assert pipe.unet.config.act_fn == "mish" and pipe.unet.config.addition_embed_type == "text_time"
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a woman, red t-shirt", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)


def test_sdxl_conditioning_matches_the_pipeline_encoding():
    from diffusers import StableDiffusionXLPipeline

    from cosmicman.model.components import build_tiny_components
    from cosmicman.model.conditioning import TextConditioner, sdxl_time_ids

    c = build_tiny_components(family="sdxl")
    pipe = StableDiffusionXLPipeline(
        vae=c.vae,
        text_encoder=c.text_encoders[0],
        text_encoder_2=c.text_encoders[1],
        tokenizer=c.tokenizers[0],
        tokenizer_2=c.tokenizers[1],
        unet=c.unet,
        scheduler=c.scheduler,
    )
    prompt = "a man, short grey hair"
    hidden, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    ids = c.tokenizers[0](prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    cond = TextConditioner(c).encode(ids)
    assert torch.allclose(cond.hidden, hidden, atol=1e-6) and torch.allclose(cond.pooled, pooled, atol=1e-6)
    ids2 = TextConditioner(c).ids_for(ids, 1)
    n = int((ids[0] != 49407).sum()) + 1  # through the first EOS
    assert ids2[0, :n].tolist() == ids[0, :n].tolist() and set(ids2[0, n:].tolist()) == {0}
    t = sdxl_time_ids(torch.tensor([[480, 320]]), torch.tensor([[8, 0]]), (96, 64))
    assert t.tolist() == [[480.0, 320.0, 8.0, 0.0, 96.0, 64.0]]


def test_ranks_split_the_stream_and_resume_skips_undecoded(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=5)
    tok = load_clip_tokenizer()

    def positions(**kw):
        ds = ShardDataset(urls, tok, 64, mask_size=(8, 8), seed=3, shuffle_buffer=4, **kw)
        return [(s["pos"], s["key"]) for s in ds], ds

    whole, _ = positions()
    r0, _ = positions(rank=0, world_size=2)
    r1, _ = positions(rank=1, world_size=2)
    # each rank reads one whole shard: together every sample once, numbered k * world_size + rank
    assert sorted(k for _, k in r0 + r1) == sorted(k for _, k in whole)
    assert [p for p, _ in r0] == [0, 2, 4, 6, 8] and [p for p, _ in r1] == [1, 3, 5, 7, 9]
    rest, ds = positions(start=6, exclude=[7])
    assert rest == [x for x in whole if x[0] >= 6 and x[0] != 7]
    assert ds.stats["samples"] == len(rest)  # skipped ones were never decoded
    with pytest.raises(ValueError):
        ShardDataset(urls, tok, 64, rank=2, world_size=2)
