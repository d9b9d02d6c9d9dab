#!/usr/bin/env bash
# Create (or refresh) the Label Studio virtualenv used by tests and demos, and print its path.
#
# Label Studio's pins conflict with the backend's, so it lives in its own venv:
#   ${MTAL_LS_VENV:-$HOME/.cache/mtal/ls-venv}
# Idempotent: a stamp file records the installed version; a second call returns at once.
# Env: MTAL_LS_VENV (venv path), MTAL_LS_VERSION (default 1.23.2), PYTHON (default python3).
set -euo pipefail

LS_VERSION="${MTAL_LS_VERSION:-1.23.2}"
VENV="${MTAL_LS_VENV:-$HOME/.cache/mtal/ls-venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.mtal-label-studio-$LS_VERSION"

if [[ -f "$STAMP" && -x "$VENV/bin/label-studio" ]]; then
    echo "$VENV"
    exit 0
fi

# An existing venv that already has the right version (e.g. made by hand) only needs its stamp.
if [[ -x "$VENV/bin/python" ]] && \
   [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" == "$LS_VERSION" ]]; then
    touch "$STAMP"
    echo "$VENV"
    exit 0
fi

echo "Installing label-studio==$LS_VERSION into $VENV (about 70 s)..." >&2
mkdir -p "$(dirname "$VENV")"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "label-studio==$LS_VERSION" 2>&1 | grep -v "is ignored" >&2 || true
# Check the install through package metadata: `label-studio --version` starts a server in LS 1.23.
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null || true)"
if [[ "$installed" != "$LS_VERSION" || ! -x "$VENV/bin/label-studio" ]]; then
    echo "label-studio $LS_VERSION did not install in $VENV (found: ${installed:-nothing})" >&2
    exit 1
fi
rm -f "$VENV"/.mtal-label-studio-*
touch "$STAMP"
echo "$VENV"
