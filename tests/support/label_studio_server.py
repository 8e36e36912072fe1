"""A real Label Studio server for tests, from its own virtualenv (``.ci/label_studio_venv.sh``).

The server runs on 127.0.0.1 with an admin whose legacy API token the test chose, local-files serving
on a folder of the test's, and whatever else the test adds to its environment (``S3_ENDPOINT``: the
operator-trusted S3 endpoint of its storages).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port, wait_until_serving

REPO = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("LABEL_STUDIO_VENV", REPO / ".venv-label-studio"))
LS_VERSION = "1.23.2"  # the pin in .ci/label_studio_venv.sh
LS_USER = "annotator@cosmicman.test"


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str
    files: Path  # its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT


def _ensure_venv() -> Path:
    if not (LS_VENV / f".installed-label-studio-{LS_VERSION}").exists():  # CI builds it before pytest
        subprocess.run(["bash", str(REPO / ".ci" / "label_studio_venv.sh"), str(LS_VENV)], check=True, timeout=1200)
    return LS_VENV


@contextmanager
def label_studio_server(base: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[LabelStudioServer]:
    """Start Label Studio with its data under ``base``; stop its whole process group on exit."""
    venv = _ensure_venv()
    data, files, home = base / "data", base / "files", base / "home"
    for d in (data, files, home):
        d.mkdir()
    template = venv / "template-data" / "label_studio.sqlite3"
    if template.exists():  # migrated once by the venv script: start in seconds, not a minute
        shutil.copy(template, data / "label_studio.sqlite3")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = "cm" + secrets.token_hex(16)
    env = {
        **os.environ,
        "HOME": str(home),  # nothing under the developer's ~/.local/share
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": LS_USER,
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(8),
        "LABEL_STUDIO_USER_TOKEN": token,
        # 1.23 creates organizations with JWT personal tokens only; a chosen token is a legacy one
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "SECRET_KEY": secrets.token_hex(16),
        **(extra_env or {}),
    }
    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        # --internal-host is the bind address; --host is the public base URL the server writes into links
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "label-studio"),
                "start",
                "--no-browser",
                "--data-dir",
                str(data),
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--host",
                url,
            ],
            cwd=base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(
            url + "/health",
            proc,
            90 if template.exists() else 240,
            "label-studio",
            lambda: log_path.read_text()[-3000:],
        )
        yield LabelStudioServer(url, token, files)
    finally:  # the whole process group: label-studio and anything it started
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
