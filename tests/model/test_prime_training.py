"""Prime through the trainer: a non-diffusers activation trains, persists, and generates."""

import json

import pytest
import torch
from webdataset import TarWriter

from cosmicman.model.activations import MPSiLU
from cosmicman.model.pipelines import load_pipeline, render_images
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.loop import train


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    import io

    import numpy as np
    from PIL import Image

    from cosmicman.core.tokenizer import load_clip_tokenizer
    from cosmicman.datasets.captions import build_caption
    from cosmicman.simulation.world import SyntheticWorld

    tok = load_clip_tokenizer()
    path = tmp_path_factory.mktemp("shards") / "shard-000000.tar"
    world = SyntheticWorld(seed=4, width=64, height=128)
    with TarWriter(str(path)) as w:
        for i in range(4):
            s = world.sample(i, case="kept")
            cap = build_caption(s.attributes, tokenizer=tok, rng=i)
            buf = io.BytesIO()
            Image.fromarray(s.mask.astype(np.uint8), mode="L").save(buf, format="PNG")
            w.write(
                {
                    "__key__": f"{i:04d}",
                    "jpg": s.image_bytes,
                    "mask.png": buf.getvalue(),
                    "json": json.dumps({**cap.to_json(), "attributes": s.attributes}).encode(),
                }
            )
    return str(path)


def test_mp_silu_variant_trains_persists_and_generates(shard, tmp_path):
    out = tmp_path / "model"
    cfg = TrainConfig(
        shards=[shard],
        output_url=str(out),
        resolution=64,
        steps=2,
        batch_size=2,
        lr=1e-4,
        hola_map_factor=8,
        act_fn="mp_silu",
        ema_decay=0.0,
        shuffle_buffer=0,
    )
    record = train(cfg, log_fn=lambda m: None)
    assert record["config"]["act_fn"] == "mp_silu"
    pipe = load_pipeline(out)
    n_mp = sum(isinstance(m, MPSiLU) for m in pipe.unet.modules())
    n_silu = sum(type(m) is torch.nn.SiLU for m in pipe.unet.modules())
    assert n_mp == 10 and n_silu == 0  # 8 ResNet blocks + time embedding + conv_act
    (image,) = render_images(pipe, ["a person"], seeds=[0], steps=2)
    assert image.size == (64, 64)


def test_unknown_activation_is_rejected_before_training(shard, tmp_path):
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        TrainConfig(shards=[shard], output_url=str(tmp_path / "m"), act_fn="swishy")


def test_bf16_autocast_trains_with_fp32_master_weights(shard, tmp_path):
    from diffusers import UNet2DConditionModel

    cfg = TrainConfig(
        shards=[shard],
        output_url=str(tmp_path / "bf16"),
        resolution=64,
        steps=2,
        batch_size=2,
        lr=1e-4,
        hola_map_factor=8,
        mixed_precision="bf16",
        ema_decay=0.0,
        shuffle_buffer=0,
    )
    record = train(cfg, log_fn=lambda m: None)
    losses = [h["loss"] for h in record["loss_history"]]
    assert all(0 < x < 10 for x in losses) and record["loss_history"][-1]["hola"] > 0
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "bf16"), subfolder="unet")
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
