"""Atomic publishing of the trained pipeline folder; ``training_run.json`` is its completion marker."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cosmicman.core.keys import TRAINING_RUN_FILE
from cosmicman.core.store import is_local
from cosmicman.model.checkpoints import fs_and_path
from cosmicman.model.components import Components


def check_output_free(url: str, overwrite: bool) -> None:
    fs, path = fs_and_path(url)
    if fs.exists(posixpath.join(path, TRAINING_RUN_FILE)) and not overwrite:
        raise FileExistsError(
            f"{url} already holds a published model ({TRAINING_RUN_FILE}); set overwrite=true "
            "or choose another output_url"
        )


def publish_folder(local_dir: str | Path, url: str, overwrite: bool = False) -> None:
    """Copy ``local_dir`` to ``url`` so that a crash leaves nothing half-visible (see the package doc).

    The files go to a sibling ``<url>.tmp-<id>`` first, then into place (one rename on a local disk, a copy each on
    an object store); the marker is written into ``url`` alone, last. So a publish killed at any point leaves at
    most folders without a marker, which no reader takes for a model; the next publish to ``url`` removes them."""
    local_dir = Path(local_dir)
    fs, final = fs_and_path(url)
    check_output_free(url, overwrite)
    for leftover in fs.glob(f"{final}.tmp-*"):  # the staging folders of publishes to this url that were killed
        fs.rm(leftover, recursive=True)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    marker = [p for p in files if p.relative_to(local_dir).as_posix() == TRAINING_RUN_FILE]
    others = [p for p in files if p not in marker]
    try:
        for p in others:
            dest = posixpath.join(tmp, p.relative_to(local_dir).as_posix())
            if is_local(fs):
                fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            fs.put_file(str(p), dest)
        if fs.exists(final):
            fs.rm(final, recursive=True)  # an overwrite, or the remains of a crashed publish (no marker)
        if is_local(fs):
            fs.makedirs(posixpath.dirname(final) or "/", exist_ok=True)
            os.replace(tmp, final)  # atomic rename of the whole folder
        else:
            for p in others:
                rel = p.relative_to(local_dir).as_posix()
                fs.copy(posixpath.join(tmp, rel), posixpath.join(final, rel))
            fs.rm(tmp, recursive=True)
        for p in marker:  # last: from here on the folder is a published model
            dest = posixpath.join(final, TRAINING_RUN_FILE)
            if is_local(fs):  # a file on disk is visible while it is written: stage it, then rename
                staged = posixpath.join(final, f".tmp-{TRAINING_RUN_FILE}")
                fs.put_file(str(p), staged)
                os.replace(staged, dest)
            else:  # an object appears whole or not at all
                fs.put_file(str(p), dest)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
        finally:
            raise


def publish_run(
    comps: Components, record: dict[str, Any], url: str, overwrite: bool, t_start: float, say: Callable[[str], None]
) -> None:
    """Save the pipeline and the record (its ``metrics.seconds`` now known) and publish them to ``url``."""
    with tempfile.TemporaryDirectory(prefix="cosmicman-train-") as tmp:
        comps.pipeline().save_pretrained(tmp)
        record["metrics"]["seconds"] = time.perf_counter() - t_start
        Path(tmp, TRAINING_RUN_FILE).write_text(json.dumps(record, indent=2))
        publish_folder(tmp, url, overwrite=overwrite)
    say(f"published {url} ({record['metrics']['seconds']:.1f} s)")
