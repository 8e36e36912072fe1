"""Quiet logs: a training launched the way ``daring_unet`` launches it prints each line once and no false or
moot notice, and a saved model loads with its Prime activation without diffusers' "will be ignored"."""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # not `from diffusers`: typed as dummies
from torch import nn

from cosmicman.model.activations import (
    CONFIG_KEY,
    LEGACY_CONFIG_KEY,
    ActivationConfig,
    apply_activation,
    load_unet_with_activation,
)
from cosmicman.model.components import tiny_unet_config
from cosmicman.model.notices import (
    DEEPSPEED_ACCELERATOR_VAR,
    TORCHVISION_FALLBACK,
    TRANSFORMERS_IMPORT_LOGGER,
    DropNotice,
    silence_torchvision_fallback,
    tell_deepspeed_the_device,
)
from cosmicman.resources.launchers import PIPES_SESSION_PREVIEW

REPO = Path(__file__).resolve().parents[2]
IGNORED = "are not expected and will be ignored"
# Dagster's console format: "<date> <time> +0000 - dagster - LEVEL - <run> - <run id> - [<pid> - ]<step> - message"
DAGSTER_LINE = re.compile(r"^\S+ \S+ \S+ - dagster - \w+ - \S+ - \S+ - (?:\d+ - )?(?:\S+ - )?(?P<message>.*)$")

# daring_unet's launch, outside the code location: the local launcher runs the trainer under Pipes
LAUNCH = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from cosmicman.core.store import Store
    from cosmicman.resources.launchers import SubprocessTrainingLauncher

    cfg, store_url = json.loads(sys.argv[1]), sys.argv[2]

    @dg.asset
    def daring_unet(context: dg.AssetExecutionContext, training_launcher: SubprocessTrainingLauncher):
        return training_launcher.launch(context, cfg, Store(store_url))

    assert dg.materialize([daring_unet], resources={"training_launcher": SubprocessTrainingLauncher()}).success
    """
)


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def diffusers_records() -> Iterator[list[logging.LogRecord]]:
    """What diffusers logs inside the block (its loggers do not propagate to the root, where caplog listens)."""
    recorder, logger = Recorder(), logging.getLogger("diffusers")
    logger.addHandler(recorder)
    try:
        yield recorder.records
    finally:
        logger.removeHandler(recorder)


def test_a_launched_training_prints_each_line_once_and_no_notice(tmp_path):
    from tests.model.test_train import write_shards

    out = tmp_path / "model"
    cfg = {
        "shards": write_shards(tmp_path / "shards", 1, 2),
        "output_url": str(out),
        "resolution": 64,
        "steps": 2,
        "batch_size": 1,
        "hola_map_factor": 8,
        "log_every": 1,
        "act_fn": "mish",
    }
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, json.dumps(cfg), str(tmp_path / "store")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    lines = output.splitlines()
    messages = [m.group("message") if (m := DAGSTER_LINE.match(line)) else line for line in lines]
    # the trainer's lines arrive once, through Dagster's log
    for said in ("step 1/2 ", "step 2/2 ", "training tiny sd UNet", f"published {out}"):
        assert sum(said in m for m in messages) == 1, (said, output)
    repeated = [m for m, n in collections.Counter(messages).items() if n > 1]
    assert not repeated, repeated
    for notice in (IGNORED, "torchvision", "PreviewWarning", "BetaWarning", "Setting accelerator", "model shards"):
        assert notice not in output, (notice, output)

    with diffusers_records() as records:
        unet = load_unet_with_activation(str(out), subfolder="unet")
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    assert type(unet.conv_act) is nn.Mish and all(type(r.nonlinearity) is nn.Mish for r in unet.down_blocks[0].resnets)


def test_saved_activation_is_a_private_config_key(tmp_path):
    unet = UNet2DConditionModel(**tiny_unet_config())
    apply_activation(unet, ActivationConfig("mp_silu", feedforward="relu"))
    unet.save_pretrained(tmp_path / "unet")
    saved = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert saved[CONFIG_KEY] == {"name": "mp_silu", "feedforward": "relu"} and LEGACY_CONFIG_KEY not in saved
    assert CONFIG_KEY.startswith("_")  # diffusers passes private keys on without a warning

    with diffusers_records() as records:
        stock = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
        reloaded = load_unet_with_activation(str(tmp_path), subfolder="unet")
    assert not [r.getMessage() for r in records if IGNORED in r.getMessage()]
    assert stock.config[CONFIG_KEY] == saved[CONFIG_KEY]  # kept in the config by a stock load
    assert type(reloaded.conv_act).__name__ == "MPSiLU"
    torch.testing.assert_close(reloaded.state_dict(), unet.state_dict(), rtol=0, atol=0)


def test_models_saved_with_the_legacy_key_still_load_with_their_activation(tmp_path):
    unet = UNet2DConditionModel(**tiny_unet_config())
    apply_activation(unet, ActivationConfig("leaky_relu"))
    unet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[LEGACY_CONFIG_KEY] = config.pop(CONFIG_KEY)  # as models were saved before the key became private
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = load_unet_with_activation(str(tmp_path))
    assert type(reloaded.conv_act) is nn.LeakyReLU and reloaded.config[CONFIG_KEY] == {
        "name": "leaky_relu",
        "feedforward": None,
    }


def test_notice_filters_drop_only_their_notice(monkeypatch):
    drop = DropNotice(TORCHVISION_FALLBACK)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(TRANSFORMERS_IMPORT_LOGGER, logging.WARNING, __file__, 1, message, None, None)

    assert not drop.filter(record(f"`CLIPImageProcessor` {TORCHVISION_FALLBACK} `CLIPImageProcessorPil`"))
    assert drop.filter(record("Could not import module 'CLIPImageProcessor'"))
    silence_torchvision_fallback()
    silence_torchvision_fallback()
    assert sum(isinstance(f, DropNotice) for f in logging.getLogger(TRANSFORMERS_IMPORT_LOGGER).filters) == 1

    monkeypatch.delenv(DEEPSPEED_ACCELERATOR_VAR, raising=False)
    tell_deepspeed_the_device(torch.device("cuda", 0))
    assert DEEPSPEED_ACCELERATOR_VAR not in os.environ  # a GPU run leaves DeepSpeed's own detection alone
    tell_deepspeed_the_device(torch.device("cpu"))
    assert os.environ[DEEPSPEED_ACCELERATOR_VAR] == "cpu"
    monkeypatch.setenv(DEEPSPEED_ACCELERATOR_VAR, "xpu")
    tell_deepspeed_the_device(torch.device("cpu"))
    assert os.environ[DEEPSPEED_ACCELERATOR_VAR] == "xpu"  # an explicit choice wins
    assert PIPES_SESSION_PREVIEW.startswith("Function `PipesMessageReader.expected_writer_count`")
