"""The metrics as Hugging Face ``evaluate`` modules, shipped in this package and loaded by local path.

``evaluate.load(<folder>)`` on a local folder (``modules/<name>/<name>.py``) reads the script from disk
and makes no network request (checked by tests/evaluation/test_metric_modules.py with sockets blocked and
no ``HF_*_OFFLINE`` variable set). Modules are loaded ``keep_in_memory``: the examples of a compute never
go to Arrow files on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["METRIC_NAMES", "MODULES_DIR", "load_metric", "metric_module_path"]

MODULES_DIR = Path(__file__).resolve().parent / "modules"
METRIC_NAMES = ("fid", "kid", "clip_score", "hpsv2")


def metric_module_path(name: str) -> Path:
    """The folder of metric ``name`` inside the package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; the package ships {', '.join(METRIC_NAMES)}")
    folder = MODULES_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(f"{folder / f'{name}.py'} is missing: the installed package is incomplete")
    return folder


def load_metric(name: str) -> Any:
    """The ``evaluate.EvaluationModule`` of metric ``name``, from the package folder (no download)."""
    import evaluate

    return evaluate.load(str(metric_module_path(name)), keep_in_memory=True)
