# Sourced by the scripts that build a tool's own virtualenv (.ci/label_studio_venv.sh,
# bench/img2dataset_venv.sh): tools whose pins must never enter the project's environment.
#
#   pinned_venv_open VENV STAMP || exit 0   # 1 when STAMP exists (nothing to do); else holds VENV's lock
#   pinned_venv_install VENV "pkg==version"
#   ... the tool's own checks ...; touch "$STAMP"
# A second run with the same pin is instant; a changed pin (another stamp name) reinstalls into the venv.

pinned_venv_open() {
  local venv="$1" stamp="$2"
  [ -f "$stamp" ] && return 1
  mkdir -p "$(dirname "$venv")"
  # One builder at a time (CI, a developer's pytest or two bench runs may all ask for it).
  exec 9>"$venv.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  [ -f "$stamp" ] && return 1
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  rm -f "${stamp%-*}"-*
  return 0
}

pinned_venv_install() {
  local venv="$1" requirement="$2"
  # (grep drops this machine's notes about absent local package mirrors; pip's real errors still show)
  # uv resolves and installs in seconds where pip takes minutes; pip if uv fails.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || true
  "$venv/bin/python" -m uv pip install --quiet --python "$venv/bin/python" "$requirement" \
    || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
