#!/usr/bin/env bash
# Make sure the host can build the project venv. On Debian/Ubuntu as root, installs
# what is missing with apt-get; elsewhere says what to install and fails.
#   scripts/setup-host.sh --test-broker   the mosquitto broker the MQTT tests start, the sshd the flash
#                                         test starts, rsync (never fails: without them those tests skip,
#                                         or fail when CI is set, and this says so)
set -euo pipefail

if [ "${1:-}" = "--test-broker" ]; then
    # openssh-server: tests/integration/test_flash.py flashes an agent through its own sshd (it
    # fails, naming this install, without one); rsync: the flash script's usual way to copy.
    wanted=()
    [ -x /usr/sbin/sshd ] || wanted+=(openssh-server)
    command -v rsync >/dev/null || wanted+=(rsync)
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || wanted+=(mosquitto)
    # postgresql: the PostgreSQL store's tests start a throwaway cluster (initdb, pg_ctl) from its programs.
    command -v pg_ctl >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || wanted+=(postgresql)
    if [ ${#wanted[@]} -eq 0 ]; then
        exit 0
    fi
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    if command -v apt-get >/dev/null && { [ ${#sudo[@]} -eq 0 ] || sudo -n true 2>/dev/null; }; then
        echo "setup-host: installing ${wanted[*]} (the MQTT tests start their own broker, the flash test its own sshd," \
             "the PostgreSQL tests their own cluster)"
        if "${sudo[@]}" apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${wanted[@]}"; then
            exit 0
        fi
    fi
    echo "setup-host: note: ${wanted[*]} not installed: the MQTT tests (mosquitto), the flash test" \
         "(openssh-server) and the PostgreSQL tests (postgresql) skip, or fail when CI is set (Debian/Ubuntu: sudo apt-get install ${wanted[*]})" >&2
    exit 0
fi

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
