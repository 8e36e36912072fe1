#!/usr/bin/env bash
# A separate virtualenv with img2dataset, the baseline that bench/sourcing.py measures our sourcing against.
#
# img2dataset pins its own pyarrow, fsspec, wandb, albumentations and opencv, so it never goes into the
# project's dependencies. Idempotent: a stamp file naming the pinned version makes a second run instant;
# a changed pin reinstalls into the same venv. After installing, a smoke run downloads one image from a
# local file:// URL list with wandb disabled, so a venv that needs the network to start is caught here.
#
#   bench/img2dataset_venv.sh [VENV_DIR]      (default: $IMG2DATASET_VENV or <repo>/.venv-img2dataset)
set -euo pipefail
IMG2DATASET_VERSION=1.47.0
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${IMG2DATASET_VENV:-$ROOT/.venv-img2dataset}}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-img2dataset-$IMG2DATASET_VERSION"

source "$ROOT/.ci/pinned_venv.sh"
start=$(date +%s)
pinned_venv_open "$VENV" "$STAMP" || exit 0
pinned_venv_install "$VENV" "img2dataset==$IMG2DATASET_VERSION"

# Smoke run, as if offline: one PNG from a file:// URL, resized, written as files (img2dataset brings
# OpenCV, not Pillow, so cv2 draws it). Proxies pointing at a closed port make any web access fail at
# once; wandb is off, and albumentations' import-time version check against PyPI is switched off (every
# img2dataset process would otherwise wait up to 2 s on it): bench/sourcing.py runs it the same way.
SMOKE="$(mktemp -d)"
trap 'rm -rf "$SMOKE"' EXIT
"$VENV/bin/python" - "$SMOKE" <<'PY'
import pathlib, sys
import cv2, numpy as np
d = pathlib.Path(sys.argv[1])
cv2.imwrite(str(d / "red.png"), np.full((48, 64, 3), (30, 30, 200), np.uint8))
(d / "urls.txt").write_text(f"file://{d / 'red.png'}\n")
PY
(cd "$SMOKE" && env WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1 HTTP_PROXY=http://127.0.0.1:9 \
  HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 "$VENV/bin/img2dataset" --url_list urls.txt \
  --output_folder out --output_format files --processes_count 1 --thread_count 1 --image_size 32 \
  --enable_wandb False --disallowed_header_directives '[]' >smoke.log 2>&1) \
  || { tail -30 "$SMOKE/smoke.log" >&2; echo "img2dataset: the smoke run failed" >&2; exit 1; }
[ -f "$SMOKE/out/00000/000000000.jpg" ] \
  || { tail -30 "$SMOKE/smoke.log" >&2; echo "img2dataset: the smoke run wrote no image" >&2; exit 1; }

touch "$STAMP"
echo "img2dataset $IMG2DATASET_VERSION installed in $VENV in $(( $(date +%s) - start )) s"
