#!/usr/bin/env bash
# Create (or refresh) the Label Studio virtualenv used by tests and demos, and print its path.
#
# Label Studio's pins conflict with the backend's, so it lives in its own venv:
#   ${MTAL_LS_VENV:-$HOME/.cache/mtal/ls-venv}
# It installs from the lock requirements-labelstudio.txt (every package at an exact version, with hashes;
# `make lock` refreshes it from requirements-labelstudio.in). A stamp file names the lock's hash and the
# Python version: a second call with the same lock returns at once; a changed lock (or Python) rebuilds
# the venv from scratch, so no package of an older lock survives in it.
#
#   scripts/ls_venv.sh           make sure the venv matches the lock; print its path
#   scripts/ls_venv.sh --stamp   print the stamp name the current lock asks for (nothing is installed)
#
# Env: MTAL_LS_VENV (venv path), MTAL_LS_LOCK (lock file), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="${MTAL_LS_LOCK:-$ROOT/requirements-labelstudio.txt}"
VENV="${MTAL_LS_VENV:-$HOME/.cache/mtal/ls-venv}"
PY="${PYTHON:-python3}"

[[ -f "$LOCK" ]] || { echo "Label Studio lock not found: $LOCK (run: make lock)" >&2; exit 1; }
LS_VERSION="$(sed -n 's/^label-studio==\([^ ;]*\).*/\1/p' "$LOCK")"
[[ -n "$LS_VERSION" ]] || { echo "$LOCK pins no label-studio==VERSION" >&2; exit 1; }
LOCK_HASH="$(sha256sum "$LOCK" | cut -c1-16)"
PY_VERSION="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
STAMP_NAME=".mtal-label-studio-$LS_VERSION-py$PY_VERSION-lock-$LOCK_HASH"
STAMP="$VENV/$STAMP_NAME"

if [[ "${1:-}" == "--stamp" ]]; then
    echo "$STAMP_NAME"
    exit 0
fi

if [[ -f "$STAMP" && -x "$VENV/bin/label-studio" ]]; then
    echo "$VENV"
    exit 0
fi

if [[ -e "$VENV" ]]; then
    echo "Label Studio venv $VENV does not match $(basename "$LOCK") (stamp $STAMP_NAME): rebuilding it" >&2
    rm -rf "$VENV"
fi
echo "Installing label-studio==$LS_VERSION from $(basename "$LOCK") into $VENV (about 2 min)..." >&2
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
# --require-hashes: every package is the one the lock names, byte for byte; --no-deps: nothing unlocked.
"$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$LOCK" 2>&1 \
    | grep -v "is ignored" >&2 || true
"$VENV/bin/pip" check >&2 || { echo "Label Studio venv $VENV: broken dependencies (pip check)" >&2; exit 1; }
# Check the install through package metadata: `label-studio --version` starts a server in LS 1.23.
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null || true)"
if [[ "$installed" != "$LS_VERSION" || ! -x "$VENV/bin/label-studio" ]]; then
    echo "label-studio $LS_VERSION did not install in $VENV from $LOCK (found: ${installed:-nothing})" >&2
    exit 1
fi
touch "$STAMP"
echo "$VENV"
