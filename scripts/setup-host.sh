#!/usr/bin/env bash
# Make sure the host can build the project venv. On Debian/Ubuntu as root, installs
# what is missing with apt-get; elsewhere says what to install and fails.
set -euo pipefail

PYTHON=${PYTHON:-python3}
missing=()
command -v "$PYTHON" >/dev/null || missing+=(python3)
if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi
command -v dpkg-deb >/dev/null || missing+=(dpkg)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    echo "setup-host: please install: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
