#!/bin/sh
# .ci/debian-venv.sh VENV_DIR
#
# The dependency floor: build a venv whose runtime dependencies are the ones Debian 12
# (bookworm, i.e. Raspberry Pi OS 12) packages -- trio 0.22, trio-websocket 0.9.2,
# pyalsaaudio 0.8.4, systemd-python 235 -- so the test suite can be run against the oldest
# versions pyproject.toml claims to support. Only the test tools come from PyPI.
# Needs root (apt-get) and /usr/bin/python3 (Debian's interpreter, not a pyenv shim).
set -eu

venv=${1:?usage: .ci/debian-venv.sh VENV_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)

# pytest-trio 0.8.0 is the only release that supports trio 0.22 (it needs trio >= 0.22 and
# pytest >= 7.2; 0.7 still uses the MultiError API that trio 0.22 deprecates). pytest 8.4 is the
# first with pytest.RaisesGroup(..., allow_unwrapped=True), which tests need to accept both trio
# 0.22's bare single errors and trio >= 0.25's strict ExceptionGroups.
PYTEST_PIN="pytest==8.4.2"
PYTEST_TRIO_PIN="pytest-trio==0.8.0"

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# python3-setuptools and python3-wheel let pip build the editable install without reaching PyPI
# (--no-build-isolation): setuptools 66 supports PEP 660 editable installs.
apt-get install -y -q --no-install-recommends \
    python3-trio python3-trio-websocket python3-alsaaudio python3-systemd \
    python3-venv python3-setuptools python3-wheel

/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$PYTEST_PIN" "$PYTEST_TRIO_PIN" "pytest-xdist==3.8.0"

# Debian 12's python3-alsaaudio 0.8.4 is unusable on Python >= 3.10: PCM.read() raises
# "SystemError: PY_SSIZE_T_CLEAN macro must be defined for '#' formats", and its PCM() takes
# no rate/channels/format/periodsize/periods arguments. The real floor is Debian 13's 0.10.0,
# built here from PyPI's sdist (the only form pyalsaaudio ships).
ALSAAUDIO_FLOOR="pyalsaaudio==0.10.0"
debian_alsaaudio=$(dpkg-query -W -f '${Version}' python3-alsaaudio)
if dpkg --compare-versions "$debian_alsaaudio" lt 0.10; then
    echo "python3-alsaaudio $debian_alsaaudio is broken on Python 3.11; building $ALSAAUDIO_FLOOR"
    apt-get install -y -q --no-install-recommends gcc python3-dev libasound2-dev
    "$venv/bin/pip" install -q --disable-pip-version-check --use-pep517 "$ALSAAUDIO_FLOOR"
fi
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$repo"

echo "Debian packages:"
dpkg-query -W -f '  ${Package} ${Version}\n' \
    python3-trio python3-trio-websocket python3-wsproto python3-alsaaudio python3-systemd \
    python3-outcome python3-exceptiongroup

echo "Modules the venv imports:"
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import sys

import alsaaudio
import systemd.daemon
import systemd.journal
import trio
import trio_websocket

floor = "/usr/lib/python3/dist-packages/"
bad = []
for dist, mod in [
    ("trio", trio),
    ("trio-websocket", trio_websocket),
    ("systemd-python", systemd.journal),
    ("pyalsaaudio", alsaaudio),  # last: may come from PyPI, see above
]:
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = "?"
    where = mod.__file__ or "?"
    print(f"  {dist} {version} from {where}")
    if not where.startswith(floor) and dist != "pyalsaaudio":
        bad.append(dist)
print(f"  python {sys.version.split()[0]} at {sys.executable}")
if bad:
    sys.exit(f"not from Debian's {floor}: {', '.join(bad)} (pip replaced a Debian package?)")
EOF
