"""Shards -> tensors, and a ~20-step Daring training run in a subprocess that publishes a loadable pipeline."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.model.shards import ShardDataset, batches, expand_shard_urls, group_label_masks

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# (group name, text, labels, foreground)
GROUPS = [
    ("person", "a woman", [], True),
    ("hair", "long black hair", [2], False),
    ("top", "red t-shirt", [4], False),
    ("bottoms", "blue jeans", [6], False),
]
COLOURS = {0: (200, 200, 170), 2: (20, 20, 20), 4: (200, 30, 30), 6: (30, 40, 160), 11: (230, 190, 160)}


def find_span(ids, sub):
    hits = [i for i in range(len(ids) - len(sub) + 1) if ids[i : i + len(sub)] == sub]
    return [hits[0], hits[0] + len(sub)] if len(hits) == 1 else None


def make_sample(i, size=64):
    """A flat 'person' (hair, face, top, jeans) on a background, its ATR label map and metadata."""
    rng = np.random.default_rng(i)
    lab = np.zeros((size, size), np.uint8)
    x0 = int(rng.integers(12, 28))
    w = 20
    lab[4:12, x0 : x0 + w] = 2  # hair
    lab[12:20, x0 + 4 : x0 + w - 4] = 11  # face
    lab[20:38, x0 : x0 + w] = 4  # upper clothes
    lab[38:60, x0 + 2 : x0 + w - 2] = 6  # pants
    img = np.zeros((size, size, 3), np.uint8)
    for k, c in COLOURS.items():
        img[lab == k] = c
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    img_bytes = buf.getvalue()
    mbuf = io.BytesIO()
    Image.fromarray(lab, mode="L").save(mbuf, format="PNG")
    tok = load_clip_tokenizer()
    caption = ", ".join(g[1] for g in GROUPS) + ", white sneakers"
    ids = tok(caption, padding="max_length", max_length=77, truncation=True).input_ids
    groups = []
    for name, text, labels, fg in GROUPS:
        groups.append(
            {
                "name": name,
                "text": text,
                "labels": labels,
                "foreground": fg,
                "span": find_span(ids, tok(text, add_special_tokens=False).input_ids),
            }
        )
    groups.append(
        {"name": "shoes", "text": "white sneakers", "labels": [9, 10], "foreground": False, "span": None}
    )  # a group without a span: mask but no loss
    sha = hashlib.sha256(img_bytes).hexdigest()
    meta = {"sha256": sha, "caption": caption, "groups": groups, "attributes": {"gender": "woman"}}
    return {"__key__": sha, "png": img_bytes, "mask.png": mbuf.getvalue(), "json": json.dumps(meta).encode()}


def write_shards(folder: Path, n_shards=2, per_shard=6):
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(n_shards):
        path = folder / f"shard-{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                sink.write(make_sample(s * 100 + i))
        urls.append(str(path))
    return urls


def test_shards_to_tensors(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    assert expand_shard_urls([str(tmp_path / "shards" / "shard-{000..001}.tar")]) == urls
    assert expand_shard_urls([str(tmp_path / "shards")]) == urls
    ds = ShardDataset(urls, load_clip_tokenizer(), resolution=32, mask_size=(4, 4))
    samples = list(ds)
    assert len(samples) == 6 and ds.stats["samples"] == 6 and not ds.stats["span_rejected"]
    s = samples[0]
    assert s["pixel_values"].shape == (3, 32, 32)
    assert s["pixel_values"].min() >= -1.0 and s["pixel_values"].max() <= 1.0
    assert s["input_ids"].shape == (77,) and s["input_ids"][0].item() == 49406
    # "a woman, long black hair, ..." -> a=1 woman=2 ,=3 long=4 black=5 hair=6
    assert s["spans"].tolist() == [[1, 3], [4, 7], [8, 12], [13, 15], [-1, -1]]
    assert s["group_masks"].shape == (5, 4, 4)
    # exact label -> mask check at full resolution (nearest resize keeps labels intact)
    raw = make_sample(0)
    lab = torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw["mask.png"]))).astype(np.int64))
    groups = json.loads(raw["json"])["groups"]
    full = group_label_masks(lab, groups, None)
    assert torch.equal(full[0], (lab != 0).float()) and torch.equal(full[1], (lab == 2).float())
    assert full[4].sum() == 0  # shoes absent
    small = group_label_masks(lab, groups, (4, 4), "area")
    assert small[1].sum().item() == pytest.approx((lab == 2).sum().item() / 256, abs=1e-5)
    b = next(batches(ShardDataset(urls, load_clip_tokenizer(), 32, (4, 4)), 4))
    assert b["pixel_values"].shape == (4, 3, 32, 32) and b["spans"].shape == (4, 5, 2)


def test_bad_spans_are_rejected(tmp_path):
    raw = make_sample(1)
    meta = json.loads(raw["json"])
    meta["groups"][1]["span"] = [5, 8]  # off by one: does not hold "long black hair"
    raw["json"] = json.dumps(meta).encode()
    ds = ShardDataset([str(p) for p in write_shards(tmp_path / "s", 1, 1)], load_clip_tokenizer(), 64, (8, 8))
    out = ds.decode(raw)
    assert out["spans"][1].tolist() == [-1, -1] and ds.stats["span_rejected"] == 1


def _env():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for k in ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"):
        env.pop(k, None)
    return env


def test_training_run_subprocess(tmp_path):
    urls = write_shards(tmp_path / "shards")
    out = tmp_path / "models" / "daring-tiny"
    cfg = {
        "shards": urls,
        "output_url": str(out),
        "resolution": 64,
        "steps": 20,
        "batch_size": 2,
        "lr": 1e-4,
        "hola_map_factor": 8,
        "hola_reduction": "released",
        "gradient_checkpointing": True,
        "seed": 0,
        "log_every": 5,
        "shuffle_buffer": 8,
    }
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [PYTHON, "-m", "cosmicman.model.train", "--config", str(cfg_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 20/20" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 20 and summary["output_url"] == str(out)
    run = json.loads((out / "training_run.json").read_text())
    hist = run["loss_history"]
    assert len(hist) == 20
    assert all(np.isfinite([h["loss"], h["noise"], h["hola"]]).all() for h in hist)
    assert all(h["hola"] > 0 for h in hist)
    assert summary["loss_first"] == hist[0]["loss"] and summary["loss_last"] == hist[-1]["loss"]
    assert run["metrics"]["hola_layers"] == [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
    ]
    assert run["metrics"]["hola_map_factor"] == 8 and run["metrics"]["buckets"] == [[64, 64]]
    assert run["metrics"]["dataset_stats"]["span_rejected"] == 0
    assert run["data"]["shards"] == urls and run["config"]["lr"] == 1e-4
    assert not list(out.parent.glob("*.tmp-*"))  # nothing half-published left behind

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(out), subfolder="unet")
    assert unet.config.act_fn == "silu"
    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a woman, red t-shirt", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
    # the published folder is itself a valid `pretrained` for the next fine-tune (activation swapped)
    from cosmicman.model.components import load_components

    comps = load_components(str(out), act_fn="gelu")
    assert comps.unet.config.act_fn == "gelu" and len(comps.tokenizers[0]) == 49408 and comps.family == "sd"

    # a published model is immutable: the trainer refuses to train into it again
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train
    from cosmicman.model.train.publish import check_output_free

    with pytest.raises(FileExistsError, match="already holds a published model"):
        check_output_free(str(out), overwrite=False)
    with pytest.raises(FileExistsError):
        train(TrainConfig.from_dict(cfg))


def test_config_rejects_unknown_keys_and_bad_values():
    from cosmicman.model.train.config import TrainConfig

    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"shards": ["x.tar"], "output_url": "/tmp/x", "learning_rate": 1})
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"shards": ["x.tar"], "output_url": "/tmp/x", "hola_reduction": "mean"})
    c = TrainConfig.from_dict({"shards": "x.tar", "output_url": "/tmp/x"})
    assert (c.lr, c.weight_decay, c.alpha, c.beta, c.hola_map_factor) == (1e-5, 1e-2, 1.0, 1.0, 16)


def test_nan_guard_stops_without_publishing(tmp_path, monkeypatch):
    from cosmicman.model.train import step as step_mod
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", 1, 2)
    out = tmp_path / "nan-model"
    monkeypatch.setattr(step_mod, "hola_loss", lambda *a, **k: torch.tensor(float("nan")))
    cfg = TrainConfig.from_dict(
        {"shards": urls, "output_url": str(out), "resolution": 64, "steps": 3, "batch_size": 1, "hola_map_factor": 8}
    )
    with pytest.raises(step_mod.NonFiniteLossError, match="non-finite loss at step 1/3"):
        train(cfg, log_fn=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob("nan-model.tmp-*"))


def test_pipes_launch_reports_materialization(tmp_path):
    import dagster

    from cosmicman.core.launch_config import put_launch_config
    from cosmicman.core.store import Store

    urls = write_shards(tmp_path / "shards", 1, 2)
    out = tmp_path / "pipes-model"
    cfg = {
        "shards": urls,
        "output_url": str(out),
        "resolution": 64,
        "steps": 2,
        "batch_size": 1,
        "hola_map_factor": 8,
        "log_every": 1,
    }

    @dagster.asset
    def daring_unet(context: dagster.AssetExecutionContext, pipes: dagster.PipesSubprocessClient):
        return pipes.run(
            command=[PYTHON, "-m", "cosmicman.model.train"],
            context=context,
            extras=put_launch_config(Store(str(tmp_path / "store")), cfg),
            env={"PYTHONPATH": str(REPO)},
            cwd=str(REPO),
        ).get_materialize_result()

    result = dagster.materialize([daring_unet], resources={"pipes": dagster.PipesSubprocessClient()})
    assert result.success
    mats = result.asset_materializations_for_node("daring_unet")
    md = {k: v.value for k, v in mats[0].metadata.items()}
    assert {"loss_first", "loss_last", "output_url", "steps"} <= set(md)
    assert md["steps"] == 2 and md["output_url"] == str(out) and np.isfinite(md["loss_last"])
    assert (out / "training_run.json").exists()


def test_object_store_publish_plain_finetune_and_act_fn(tmp_path):
    """beta=0 (no capture), act_fn=mish, and the object-store publish path (memory:// stands in for s3://)."""
    import fsspec

    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", 1, 2)
    url = "memory://cosmicman-test/models/plain-mish"
    rec = train(
        TrainConfig.from_dict(
            {
                "shards": urls,
                "output_url": url,
                "resolution": 64,
                "steps": 2,
                "batch_size": 1,
                "beta": 0.0,
                "act_fn": "mish",
                "hola_map_factor": 8,
                "checkpoint_every": 1,
                "checkpoints_keep": 1,
            }
        ),
        log_fn=lambda m: None,
    )
    from cosmicman.model.checkpoints import list_checkpoints

    assert [s for s, _ in list_checkpoints(f"{url}.checkpoints")] == [2]  # object-store checkpoints
    assert rec["metrics"]["hola_layers"] == [] and rec["metrics"]["hola_loss_last"] == 0.0
    fs = fsspec.filesystem("memory")
    assert json.loads(fs.cat(f"{url}/unet/config.json"))["act_fn"] == "mish"
    assert fs.exists(f"{url}/training_run.json") and fs.exists(f"{url}/model_index.json")
    assert not [p for p in fs.ls("memory://cosmicman-test/models", detail=False) if ".tmp-" in p]
    fs.rm("memory://cosmicman-test", recursive=True)


def test_ema_published_and_checkpoints(tmp_path):
    """EMA follows diffusers' EMAModel schedule; save_ema picks the published UNet; incomplete
    checkpoint folders are invisible; only the last checkpoints_keep remain."""
    from diffusers import UNet2DConditionModel

    from cosmicman.model.checkpoints import list_checkpoints
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", 1, 3)
    base = {
        "shards": urls,
        "resolution": 64,
        "steps": 3,
        "batch_size": 1,
        "lr": 1e-3,
        "hola_map_factor": 8,
        "ema_decay": 0.5,
        "checkpoint_every": 1,
        "checkpoints_keep": 3,
    }
    recs, unets = {}, {}
    for save_ema in (True, False):
        out = tmp_path / f"ema-{save_ema}"
        recs[save_ema] = train(
            TrainConfig.from_dict({**base, "output_url": str(out), "save_ema": save_ema}), log_fn=lambda m: None
        )
        unets[save_ema] = UNet2DConditionModel.from_pretrained(str(out), subfolder="unet").state_dict()
    assert recs[True]["metrics"]["published_unet"] == "ema" and recs[False]["metrics"]["published_unet"] == "raw"
    assert recs[True]["loss_history"] == recs[False]["loss_history"]
    root = tmp_path / "ema-True.checkpoints"
    (root / "step-00000099").mkdir()  # no COMPLETE marker: ignored
    (root / "step-00000100.tmp-abc").mkdir()
    found = list_checkpoints(str(root))
    assert [s for s, _ in found] == [1, 2, 3]
    raw = [torch.load(Path(p) / "state.pt", weights_only=False)["unet"] for _, p in found]
    d2, d3 = 2 / 11, 0.25  # min(0.5, (1 + s) / (10 + s)) at s = 1, 2; step 1 copies the weights
    for k in raw[0]:
        s2 = d2 * raw[0][k] + (1 - d2) * raw[1][k]
        expect = d3 * s2 + (1 - d3) * raw[2][k]
        assert torch.allclose(unets[True][k], expect, atol=1e-6), k
        assert torch.equal(unets[False][k], raw[2][k]), k
    state = torch.load(Path(found[-1][1]) / "state.pt", weights_only=False)
    assert state["ema"]["optimization_step"] == 3 and state["step"] == 3
    mine = torch.load(Path(found[-1][1]) / "rank-00000.pt", weights_only=False)
    # 3 samples, no shuffle buffer: positions 0..2 consumed, nothing pending
    assert mine["samples_seen"] == 3 and mine["data"] == {"start": 3, "exclude": []}
    assert set(mine["rng"]) >= {"torch", "generators", "python", "numpy"}


def test_loss_options_vpred_snr_offset_caption_dropout(tmp_path):
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", 1, 2)
    out = tmp_path / "vpred"
    rec = train(
        TrainConfig.from_dict(
            {
                "shards": urls,
                "output_url": str(out),
                "resolution": 64,
                "steps": 3,
                "batch_size": 2,
                "hola_map_factor": 8,
                "prediction_type": "v_prediction",
                "snr_gamma": 5.0,
                "noise_offset": 0.05,
                "caption_dropout": 1.0,
                "ema_decay": 0.0,
            }
        ),
        log_fn=lambda m: None,
    )
    hist = rec["loss_history"]
    assert all(h["caption_dropped"] and h["hola"] == 0.0 and np.isfinite(h["noise"]) for h in hist)
    assert rec["metrics"]["caption_dropped_batches"] == 3 and rec["metrics"]["published_unet"] == "raw"
    c = rec["config"]
    assert (c["prediction_type"], c["snr_gamma"], c["noise_offset"], c["caption_dropout"], c["ema_decay"]) == (
        "v_prediction",
        5.0,
        0.05,
        1.0,
        0.0,
    )
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    # no dropout: HOLA is on
    rec2 = train(
        TrainConfig.from_dict(
            {
                "shards": urls,
                "output_url": str(tmp_path / "eps"),
                "resolution": 64,
                "steps": 2,
                "batch_size": 2,
                "hola_map_factor": 8,
                "snr_gamma": 5.0,
                "caption_dropout": 0.0,
            }
        ),
        log_fn=lambda m: None,
    )
    assert all(h["hola"] > 0 and "caption_dropped" not in h for h in rec2["loss_history"])
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"shards": ["x.tar"], "output_url": "/tmp/x", "prediction_type": "sample"})
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"shards": ["x.tar"], "output_url": "/tmp/x", "ema_decay": 1.0})
    d = TrainConfig.from_dict({"shards": ["x.tar"], "output_url": "/tmp/x"})
    assert (
        d.ema_decay,
        d.save_ema,
        d.noise_offset,
        d.caption_dropout,
        d.snr_gamma,
        d.prediction_type,
        d.checkpoint_every,
        d.resume,
    ) == (0.9999, True, 0.0, 0.0, None, None, 0, False)
