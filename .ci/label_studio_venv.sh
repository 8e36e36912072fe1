#!/usr/bin/env bash
# A separate virtualenv with the Label Studio *server*, for tests/annotation/test_label_studio.py.
#
# The server pins Django and many other packages of its own, so it never goes into the project's
# dependencies (the project only needs the client, label-studio-sdk). Also builds a migrated, empty
# SQLite database under $VENV/template-data: a test server started on a copy is up in seconds instead
# of a minute of migrations. Idempotent: a stamp file naming the pinned version makes a second run
# instant; a changed pin reinstalls into the same venv.
#
#   .ci/label_studio_venv.sh [VENV_DIR]      (default: $LABEL_STUDIO_VENV or <repo>/.venv-label-studio)
set -euo pipefail
LABEL_STUDIO_VERSION=1.23.2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${LABEL_STUDIO_VENV:-$ROOT/.venv-label-studio}}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-label-studio-$LABEL_STUDIO_VERSION"

source "$ROOT/.ci/pinned_venv.sh"
start=$(date +%s)
pinned_venv_open "$VENV" "$STAMP" || exit 0
pinned_venv_install "$VENV" "label-studio==$LABEL_STUDIO_VERSION"
"$VENV/bin/python" -c "import label_studio, sys; v = label_studio.__version__; sys.exit(v != '$LABEL_STUDIO_VERSION' and f'label-studio {v} installed, expected $LABEL_STUDIO_VERSION')"

# The template database: the migrations `label-studio start` applies first, nothing else (no user, no
# organization), with the version check against PyPI off and HOME pointed away from ~/.local/share.
rm -rf "$VENV/template-data" "$VENV/template-data.tmp"
mkdir -p "$VENV/template-data.tmp/home"
(cd "$VENV/template-data.tmp" && env LABEL_STUDIO_BASE_DATA_DIR="$VENV/template-data.tmp" HOME="$VENV/template-data.tmp/home" \
  LABEL_STUDIO_LATEST_VERSION_CHECK=false LABEL_STUDIO_COLLECT_ANALYTICS=false SECRET_KEY=template-only \
  "$VENV/bin/python" -W ignore -c "from label_studio.server import _setup_env, _apply_database_migrations
_setup_env(); _apply_database_migrations()" >"$VENV/template-data.log" 2>&1) \
  || { tail -30 "$VENV/template-data.log" >&2; echo "label-studio: migrating the template database failed" >&2; exit 1; }
mkdir -p "$VENV/template-data"
mv "$VENV/template-data.tmp/label_studio.sqlite3" "$VENV/template-data/"
rm -rf "$VENV/template-data.tmp"

touch "$STAMP"
echo "label-studio $LABEL_STUDIO_VERSION installed in $VENV in $(( $(date +%s) - start )) s"
