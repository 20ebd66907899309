#!/bin/sh
# Install dgd as a hardened systemd service (see docs/INSTALL.md). Run as root from a checkout:
#
#   sudo sh systemd/install.sh            # --debian: Debian's packaged deps, no compiler, no PyPI
#   sudo sh systemd/install.sh --venv     # the newest deps from PyPI, compiled here
#
# Safe to run again (to upgrade, or after a failure): it replaces the program and the unit,
# and never touches an existing /etc/dgd.toml or /etc/dgd/api-key.
set -eu

usage() {
    cat <<'EOF'
Usage: install.sh [--debian | --venv] [--no-apt] [--root DIR] [--python PATH]
                  [--systemd-version N] [REPO]

  --debian       (default) apt-get install Debian's python3-trio, python3-trio-websocket,
                 python3-alsaaudio and python3-systemd; make the venv /opt/dgd with
                 --system-site-packages and install dgd into it offline (no compiler, no PyPI).
                 Exception: Debian 12's python3-alsaaudio 0.8.4 is broken, so there pyalsaaudio
                 is built from PyPI (gcc, python3-dev, libasound2-dev are installed for that).
  --venv         apt-get install the build tools (gcc, python3-dev, libasound2-dev,
                 libsystemd-dev, pkg-config) and install dgd and its newest deps from PyPI.
  --no-apt       do not run apt-get (the packages are already there, or you are testing); with
                 --debian nothing at all is downloaded, and a missing piece is only reported.
  --root DIR     install under DIR instead of / (like DESTDIR; for tests and staging: the venv
                 in DIR/opt/dgd only works at that path). No systemctl call is made.
  --python PATH  the interpreter the venv is made from (default /usr/bin/python3).
  --systemd-version N
                 the systemd the unit is for (default: what `systemctl --version` says; with
                 --root, say it if DIR's systemd differs from this machine's). 253 and newer get
                 the drop-in dgd.service.d/notify-reload.conf (Type=notify-reload: `systemctl
                 reload` waits until dgd has reloaded); older ones keep dgd.service's
                 Type=notify with ExecReload=/bin/kill -HUP.
  REPO           the dgd source tree (default: the checkout this script is in).
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

mode=debian
apt=yes
root=
python=/usr/bin/python3
systemd_version=
repo=$(cd "$(dirname "$0")/.." && pwd)

while [ $# -gt 0 ]; do
    case $1 in
        --debian) mode=debian ;;
        --venv) mode=venv ;;
        --no-apt) apt=no ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift ;;
        --root=*) root=${1#--root=} ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; python=$2; shift ;;
        --python=*) python=${1#--python=} ;;
        --systemd-version) [ $# -ge 2 ] || die "--systemd-version needs a number"
            systemd_version=$2; shift ;;
        --systemd-version=*) systemd_version=${1#--systemd-version=} ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) repo=$1 ;;
    esac
    shift
done

if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
    [ "$root" != / ] || root=
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run me as root: sudo sh $0 $*"
fi
[ -f "$repo/pyproject.toml" ] && [ -d "$repo/dgd" ] ||
    die "$repo is not a dgd source tree (no pyproject.toml or dgd/); pass the checkout as REPO"
[ -f "$repo/etc/dgd.toml" ] || die "the example config $repo/etc/dgd.toml is missing"
[ -f "$repo/etc/logrotate.d/dgd" ] || die "the logrotate snippet $repo/etc/logrotate.d/dgd is missing"
[ -f "$repo/systemd/notify-reload.conf" ] ||
    die "the unit's drop-in $repo/systemd/notify-reload.conf is missing"
if [ -z "$systemd_version" ]; then
    # "systemd 257 (257.13-1~deb13u1)" -> 257. Unknown (no systemctl) counts as old: the unit
    # without the drop-in works on every systemd, only `systemctl reload` returns early.
    systemd_version=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p')
    systemd_version=${systemd_version:-0}
fi
case $systemd_version in
    '' | *[!0-9]*) die "--systemd-version must be a number like 257, not '$systemd_version'" ;;
esac
[ -x "$python" ] || die "no Python interpreter at $python; install python3 or pass --python PATH"

venv=$root/opt/dgd
unit=$root/etc/systemd/system/dgd.service
dropin=$root/etc/systemd/system/dgd.service.d/notify-reload.conf
config=$root/etc/dgd.toml
keydir=$root/etc/dgd
key=$keydir/api-key

# --- 1. System packages -------------------------------------------------------------------
if [ "$apt" = yes ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    if [ "$mode" = debian ]; then
        # Debian 12 ships trio 0.22, trio-websocket 0.9.2, pyalsaaudio 0.8.4, systemd-python 235:
        # the floor pyproject.toml declares. setuptools and wheel build dgd itself offline.
        apt-get install -y -q python3-trio python3-trio-websocket python3-alsaaudio \
            python3-systemd python3-venv python3-setuptools python3-wheel
    else
        # pyalsaaudio and systemd-python are sdists only: they compile against these headers.
        apt-get install -y -q gcc python3-dev python3-venv libasound2-dev libsystemd-dev pkg-config
    fi
fi

# --- 2. The program: a venv in /opt/dgd ------------------------------------------------------
if [ "$mode" = debian ]; then
    "$python" -m venv --system-site-packages "$venv"
    # --force-reinstall so that running this again installs the checkout's current code even
    # when the version number did not change; --no-deps keeps it to dgd alone.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-index \
        --no-build-isolation --force-reinstall "$repo"
    # Debian 12's python3-alsaaudio 0.8.4 cannot capture on Python 3.11: PCM.read() raises
    # "SystemError: PY_SSIZE_T_CLEAN macro must be defined". Debian 13 ships 0.10.0, which works.
    # On Debian 12 the one compiled dependency is therefore built from PyPI into the venv.
    alsa_ok='import importlib.metadata as m, sys
sys.exit(tuple(map(int, m.version("pyalsaaudio").split(".")[:2])) < (0, 10))'
    if ! "$venv/bin/python" -c "$alsa_ok" 2>/dev/null; then
        if [ "$apt" = yes ]; then
            echo "Debian's python3-alsaaudio is older than 0.10 and broken: building pyalsaaudio"
            apt-get install -y -q gcc python3-dev libasound2-dev pkg-config
            "$venv/bin/python" -m pip install -q --disable-pip-version-check --use-pep517 \
                "pyalsaaudio>=0.10"
        else
            echo "warning: pyalsaaudio >= 0.10 is missing from $venv (Debian 12's 0.8.4 cannot" \
                "capture): apt-get install gcc python3-dev libasound2-dev, then" \
                "$venv/bin/pip install 'pyalsaaudio>=0.10'" >&2
        fi
    fi
    if ! "$venv/bin/python" -c 'import trio, trio_websocket, alsaaudio, systemd.journal' 2>/dev/null; then
        msg="dgd's dependencies are not importable in $venv: apt-get install python3-trio"
        msg="$msg python3-trio-websocket python3-alsaaudio python3-systemd (or use --venv)"
        [ "$apt" = no ] || die "$msg"
        echo "warning: $msg" >&2
    fi
else
    "$python" -m venv "$venv"
    # --use-pep517: build pyalsaaudio and systemd-python (sdists) as wheels, not `setup.py install`.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --use-pep517 "$repo"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        --force-reinstall "$repo"
fi
[ -x "$venv/bin/dgd" ] || die "pip did not create $venv/bin/dgd; see the pip output above"

# --- 3. The unit, the config and the key ------------------------------------------------------
# The unit is ours and always replaced; local changes belong in `systemctl edit dgd`.
install -d -m 0755 "$root/etc/systemd/system"
install -m 0644 "$repo/systemd/dgd.service" "$unit"
# Type=notify-reload exists since systemd 253; 252 would ignore the drop-in's Type= with a
# warning but honour its empty ExecReload=, leaving no way to reload at all. Ours like the unit:
# replaced, or removed where it does not belong (other files in dgd.service.d are the admin's).
if [ "$systemd_version" -ge 253 ]; then
    install -d -m 0755 "$(dirname "$dropin")"
    install -m 0644 "$repo/systemd/notify-reload.conf" "$dropin"
    echo "systemd $systemd_version: Type=notify-reload (systemctl reload waits for dgd)"
else
    rm -f "$dropin"
    rmdir "$(dirname "$dropin")" 2>/dev/null || true
    echo "systemd $systemd_version: Type=notify, reload by ExecReload=/bin/kill -HUP" \
        "(Type=notify-reload needs systemd 253)"
fi

if [ -e "$config" ]; then
    echo "kept existing /etc/dgd.toml"
else
    install -m 0644 "$repo/etc/dgd.toml" "$config"
    echo "installed the example config as /etc/dgd.toml"
fi

# logrotate for output.jsonl (a no-op while that file does not exist); an edited one is kept.
logrotate=$root/etc/logrotate.d/dgd
install -d -m 0755 "$root/etc/logrotate.d"
if [ -e "$logrotate" ] && ! cmp -s "$repo/etc/logrotate.d/dgd" "$logrotate"; then
    echo "kept existing /etc/logrotate.d/dgd (yours differs from $repo/etc/logrotate.d/dgd)"
else
    install -m 0644 "$repo/etc/logrotate.d/dgd" "$logrotate"
fi

install -d -m 0755 "$keydir"
if [ -e "$key" ]; then
    echo "kept existing /etc/dgd/api-key"
else
    # Empty on purpose: a comment would be read as the key. dgd names this file when it is empty.
    (umask 077 && : >"$key")
    echo "created an empty /etc/dgd/api-key (mode 0600)"
fi
# Only root may read the key; systemd hands it to dgd through LoadCredential=.
chmod 0600 "$key"

# --- 4. Tell systemd (only if it is running this machine) ------------------------------------
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<'EOF'

dgd is installed. Three commands remain (put your Deepgram API key in the first; also
review /etc/dgd.toml, e.g. audio.device, with `sudoedit /etc/dgd.toml`):

  sudoedit /etc/dgd/api-key
  systemctl enable --now dgd
  journalctl -u dgd -f
EOF
