#!/usr/bin/env bash
# Install the dms systemd service: user and groups, unit, udev rule, example config.
# Idempotent: running it again changes nothing that is already in place, and never
# overwrites /etc/dms/dms.toml or /etc/dms/dms.env.
#
#   sudo systemd/install.sh                 # install on this machine
#   systemd/install.sh --prefix /tmp/root   # staged install under a root dir (also: DESTDIR=...)
#   systemd/install.sh --dry-run            # print what would be done
#
# The Python environment is not built here: the unit runs /opt/dms/.venv/bin/dms (see README).
set -euo pipefail

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --prefix DIR | --dry-run | --no-enable | -h"
}

ROOT="${DESTDIR:-}"
DRY_RUN=0
ENABLE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
                  ROOT="$2"; shift 2 ;;
        --prefix=*) ROOT="${1#--prefix=}"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-enable) ENABLE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
ROOT="${ROOT%/}"
SRC="$(cd "$(dirname "$0")" && pwd)"
USER_NAME=dms
ETC="$ROOT/etc"

say() { echo "install.sh: $*"; }
run() {
    if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ] && [ "$DRY_RUN" = 0 ]; then
    echo "install.sh: run as root (or stage with --prefix DIR / DESTDIR=DIR, or --dry-run)" >&2
    exit 1
fi
for f in dms.service dms-failed.service 99-dms-gpio.rules dms.example.toml; do
    [ -f "$SRC/$f" ] || { echo "install.sh: missing $SRC/$f" >&2; exit 1; }
done

# -- groups and user ---------------------------------------------------------------------------
# On this machine: getent/groupadd/useradd. Under a staged root: the root's own /etc files
# through shadow-utils' --prefix (nothing on the host is touched); skipped if it has none.
if [ -n "$ROOT" ]; then
    if [ -f "$ETC/passwd" ] && [ -f "$ETC/group" ]; then
        ACCOUNTS=prefix
    else
        ACCOUNTS=skip
        say "no $ETC/passwd: skipping user and group creation in the staged root"
    fi
else
    ACCOUNTS=host
fi

has_group() {
    if [ "$ACCOUNTS" = prefix ]; then grep -q "^$1:" "$ETC/group"; else getent group "$1" >/dev/null; fi
}
has_user() {
    if [ "$ACCOUNTS" = prefix ]; then grep -q "^$1:" "$ETC/passwd"; else getent passwd "$1" >/dev/null; fi
}
in_group() {  # in_group GROUP USER (supplementary membership)
    if [ "$ACCOUNTS" = prefix ]; then
        grep "^$1:" "$ETC/group" | cut -d: -f4 | tr ',' '\n' | grep -qx "$2"
    else
        id -nG "$2" | tr ' ' '\n' | grep -qx "$1"
    fi
}
prefix_args=()
[ "$ACCOUNTS" = prefix ] && prefix_args=(--prefix "$ROOT")

if [ "$ACCOUNTS" != skip ]; then
    for g in gpio video; do
        if has_group "$g"; then say "group $g exists"
        else run groupadd "${prefix_args[@]}" --system "$g"; fi
    done
    if has_user "$USER_NAME"; then
        for g in video gpio; do
            if in_group "$g" "$USER_NAME"; then say "user $USER_NAME is in group $g"
            else run usermod "${prefix_args[@]}" -a -G "$g" "$USER_NAME"; fi
        done
    else
        run useradd "${prefix_args[@]}" --system --user-group --home-dir /var/lib/dms \
            --no-create-home --shell /usr/sbin/nologin --groups video,gpio \
            --comment "dms driver monitoring" "$USER_NAME"
    fi
fi

# -- files -------------------------------------------------------------------------------------
# install_file SRC DEST MODE: copy if absent or different.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        say "$2 is up to date"
    else
        run install -D -m "$3" "$1" "$2"
    fi
}
# install_once SRC DEST MODE: copy only if absent (the administrator's file is never replaced).
install_once() {
    if [ -e "$2" ]; then
        say "$2 exists; left as it is"
    else
        run install -D -m "$3" "$1" "$2"
    fi
}

install_file "$SRC/dms.service" "$ETC/systemd/system/dms.service" 0644
install_file "$SRC/dms-failed.service" "$ETC/systemd/system/dms-failed.service" 0644
install_file "$SRC/99-dms-gpio.rules" "$ETC/udev/rules.d/99-dms-gpio.rules" 0644
install_file "$SRC/dms.example.toml" "$ETC/dms/dms.example.toml" 0644
install_once "$SRC/dms.example.toml" "$ETC/dms/dms.toml" 0640
if [ -e "$ETC/dms/dms.env" ]; then
    say "$ETC/dms/dms.env exists; left as it is"
elif [ "$DRY_RUN" = 1 ]; then
    echo "+ create $ETC/dms/dms.env (mode 0600)"
else
    (umask 077 && printf '%s\n' \
        '# Secrets for dms.service (EnvironmentFile). Readable by root only.' \
        '# DMS_MQTT_PASSWORD=change-me' \
        '# Key that signs operator commands (mute, calibrate); without it they are refused:' \
        '# DMS_COMMAND_KEY=  (openssl rand -hex 32)' \
        '# Token of the installer'"'"'s preview page ([preview] in dms.toml; off by default):' \
        '# DMS_PREVIEW_TOKEN=  (openssl rand -hex 32)' > "$ETC/dms/dms.env")
fi
if [ -z "$ROOT" ] && [ "$ACCOUNTS" = host ] && [ "$DRY_RUN" = 0 ]; then
    chgrp "$USER_NAME" "$ETC/dms/dms.toml" 2>/dev/null || true
fi

# -- systemd and udev --------------------------------------------------------------------------
if [ -n "$ROOT" ]; then
    if [ "$ENABLE" = 1 ]; then
        if command -v systemctl >/dev/null; then
            run systemctl --root="$ROOT" --quiet enable dms.service
        else
            run mkdir -p "$ETC/systemd/system/multi-user.target.wants"
            run ln -sfn /etc/systemd/system/dms.service \
                "$ETC/systemd/system/multi-user.target.wants/dms.service"
        fi
    fi
    say "staged under $ROOT (no daemon-reload, no udev reload)"
else
    if [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
        [ "$ENABLE" = 1 ] && run systemctl enable dms.service
    else
        say "systemd is not running: skipping daemon-reload"
        [ "$ENABLE" = 1 ] && run systemctl --quiet enable dms.service
    fi
    if command -v udevadm >/dev/null && [ -d /run/udev ]; then
        run udevadm control --reload-rules
        run udevadm trigger --subsystem-match=gpio --action=change
    fi
    say "done. Edit /etc/dms/dms.toml (and dms.env), then: systemctl restart dms"
fi
