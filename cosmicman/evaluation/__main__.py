"""Evaluate one trained model from a JSON config (path or fsspec URL): ``python -m cosmicman.evaluation``.

Launched by the ``evaluation`` asset in its own process (a local child, a GPU pod) and talking back through
Dagster Pipes: the report's figures come back as one asset materialization. Without Pipes it prints the
report as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from cosmicman.core.launch_config import LaunchConfigError, fetch_launch_config
from cosmicman.evaluation.config import EvaluationConfig
from cosmicman.evaluation.run import evaluate_model


def _config_from(arg: str | None, extras: dict[str, Any] | None) -> EvaluationConfig:
    """From ``--config``, else from the config the Pipes extras reference (the launchers store it on the
    object store: ``cosmicman.core.launch_config``); a missing or altered one ends the process in one line."""
    if arg:
        return EvaluationConfig.load(arg)
    try:
        return EvaluationConfig.from_dict(fetch_launch_config(extras or {}))
    except LaunchConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def pipes_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """The report as Pipes metadata: figures as numbers, nested records as JSON."""
    out: dict[str, Any] = {k: float(v) for k, v in report["metrics"].items()}
    out.update({f"ceiling_{k}": float(v) for k, v in report["ceiling"].items()})
    for key, value in report.items():
        if key in ("metrics", "ceiling"):
            continue
        out[key] = {"raw_value": value, "type": "json"} if isinstance(value, dict | list) else value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmicman.evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON config: local path or fsspec URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    from cosmicman.model.notices import progress_bars_hidden, silence_torchvision_fallback

    silence_torchvision_fallback()
    if PipesEnvVarParamsLoader().is_dagster_pipes_process():
        from cosmicman.model.pipes_channel import ObjectStoreMessageWriter

        with open_dagster_pipes(message_writer=ObjectStoreMessageWriter()) as context:
            cfg = _config_from(args.config, dict(context.extras or {}))
            with progress_bars_hidden():
                report = evaluate_model(cfg, log_fn=context.log.info)
            context.report_asset_materialization(metadata=pipes_metadata(report))
        return 0
    try:
        report = evaluate_model(_config_from(args.config, None))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
