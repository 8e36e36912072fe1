"""Daring trainer: train and publish one model from a JSON config (path or fsspec URL).

The package doc says how it works. Under Dagster Pipes rank 0 reports the run as one asset materialization,
and its progress lines go to Dagster's log only: a local trainer shares the launcher's console, where Dagster
prints that log, so a second copy on stderr would show every line twice."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from typing import Any

from cosmicman.core.launch_config import LaunchConfigError, fetch_launch_config
from cosmicman.model.distributed import DistEnv
from cosmicman.model.notices import quiet_trainer_notices
from cosmicman.model.run_record import summary
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.loop import train
from cosmicman.model.train.step import NonFiniteLossError, resolve_device


def _config_from(arg: str | None, extras: dict[str, Any] | None) -> TrainConfig:
    """From ``--config``, else from the config the Pipes extras reference (the launchers store it on the
    object store: ``cosmicman.core.launch_config``); a missing or altered one ends the process in one line."""
    if arg:
        return TrainConfig.load(arg)
    try:
        return TrainConfig.from_dict(fetch_launch_config(extras or {}))
    except LaunchConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def _prepared(cfg: TrainConfig) -> TrainConfig:
    """``cfg``, once the libraries' notices that are moot for it are silenced (``cosmicman.model.notices``)."""
    quiet_trainer_notices(resolve_device(cfg.device, DistEnv.from_env()))
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmicman.model.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON config: local path or fsspec URL")
    # the `deepspeed` launcher passes --local_rank; the rank comes from the environment it also sets
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    # Pipes only on rank 0: every rank inherits the launcher's environment, one reports.
    # (dagster_pipes 1.13 has no module-level is_dagster_pipes_process(); the env-var loader's check is it)
    if DistEnv.from_env().is_main and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        from cosmicman.model.pipes_channel import ObjectStoreMessageWriter

        with open_dagster_pipes(message_writer=ObjectStoreMessageWriter()) as context:
            cfg = _prepared(_config_from(args.config, dict(context.extras or {})))
            record = train(cfg, log_fn=context.log.info)
            context.report_asset_materialization(
                metadata={
                    k: {"raw_value": v, "type": "json"} if isinstance(v, dict) else v
                    for k, v in summary(record).items()
                }
            )
        return 0
    if not args.config and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        # a non-zero rank under Pipes: the config comes from the extras rank 0 reads; read them too
        from dagster_pipes import PipesDefaultContextLoader

        params = PipesEnvVarParamsLoader().load_context_params()
        with PipesDefaultContextLoader().load_context(params) as data:
            cfg = _prepared(_config_from(None, dict(data.get("extras") or {})))
    else:
        cfg = _prepared(_config_from(args.config, None))
    try:
        # stdout carries only the summary: libraries that log to stdout (DeepSpeed) go to stderr meanwhile
        with contextlib.redirect_stdout(sys.stderr):
            record = train(cfg)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if DistEnv.from_env().is_main:
        print(json.dumps(summary(record), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
