"""The project's Dagster instance under ``$COSMICMAN_HOME/dagster``: what ``make run``'s daemon and ``make ui``
share. Its ``dagster.yaml`` is a copy of ``deploy/dagster.local.yaml``, made once when absent, and is then yours
to edit. The instance configurations live in ``deploy/`` beside the repository's other deployment files, not in
the package: the production one is read by whoever deploys (a container image, a host running the daemon)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cosmicman.cli.errors import UserError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
LOCAL_INSTANCE_YAML = DEPLOY / "dagster.local.yaml"
PRODUCTION_INSTANCE_YAML = DEPLOY / "dagster.production.yaml"


def dagster_home(home: Path) -> Path:
    return home / "dagster"


def prepare_instance(home: Path) -> Path:
    """``<home>/dagster`` with a ``dagster.yaml`` (copied from ``deploy/dagster.local.yaml`` only when absent);
    the folder."""
    folder = dagster_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dagster.yaml"
    if not config.exists():
        if not LOCAL_INSTANCE_YAML.is_file():
            raise UserError(
                f"no {LOCAL_INSTANCE_YAML}: run from a checkout of the repository (make install installs it "
                f"editable), or write {config} yourself"
            )
        shutil.copyfile(LOCAL_INSTANCE_YAML, config)
    return folder
