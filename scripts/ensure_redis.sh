#!/usr/bin/env bash
# Make sure `redis-server` is on PATH; install Debian's redis-server package if it is not.
# Works as root, uses sudo otherwise (non-interactive), and fails with a clear message if neither works.
# The package's own service is not needed: tests start their own redis-server on a free port.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server: $(command -v redis-server)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing and apt-get is not available: install Redis (>= 6) by hand." >&2
    exit 1
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "redis-server is missing; run as root or with passwordless sudo: apt-get install -y redis-server" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >&2
"${SUDO[@]}" apt-get install -y -q --no-install-recommends redis-server >&2
command -v redis-server >/dev/null 2>&1 || { echo "redis-server still not on PATH after install" >&2; exit 1; }
echo "redis-server: $(command -v redis-server)"
