#!/usr/bin/env bash
# with-journald.sh CMD...  — run CMD with a private, real systemd-journald.
#
# In a private mount namespace, tmpfs is mounted over /run/systemd, /run/log and
# /var/log/journal and /lib/systemd/systemd-journald is started there, so CMD (and every
# process it starts) logs to a throwaway journal that `journalctl` reads back. The host's
# /run and /var/log are untouched, and journald is stopped when CMD ends.
#
# Needs root (for unshare and mount). Otherwise, or if the namespace or journald cannot be
# set up, CMD runs directly with DGD_TEST_NO_JOURNALD=1 exported, and journald-dependent
# tests skip and say why. The exit status is CMD's.
#
#   sudo tests/with-journald.sh .venv/bin/pytest -m e2e -v
set -uo pipefail

JOURNALD=${JOURNALD:-/lib/systemd/systemd-journald}

fallback() {
  echo "with-journald.sh: $1; running without journald (DGD_TEST_NO_JOURNALD=1)" >&2
  shift
  export DGD_TEST_NO_JOURNALD=1
  exec "$@"
}

[ $# -gt 0 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || fallback "not root" "$@"
[ -x "$JOURNALD" ] || fallback "$JOURNALD not found" "$@"
unshare --mount --propagation private true 2>/dev/null || fallback "unshare --mount failed" "$@"

exec unshare --mount --propagation private -- bash -uc '
  no_journald() {
    echo "with-journald.sh: $1; running without journald (DGD_TEST_NO_JOURNALD=1)" >&2
    export DGD_TEST_NO_JOURNALD=1
    exec "${@:2}"
  }
  mount -t tmpfs tmpfs /run/systemd || no_journald "cannot mount /run/systemd" "$@"
  mkdir -p /run/log && mount -t tmpfs tmpfs /run/log || no_journald "cannot mount /run/log" "$@"
  if [ -d /var/log/journal ]; then
    mount -t tmpfs tmpfs /var/log/journal || no_journald "cannot mount /var/log/journal" "$@"
  fi
  "'"$JOURNALD"'" >/dev/null 2>&1 </dev/null &
  jpid=$!
  for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
  if [ ! -S /run/systemd/journal/socket ]; then
    kill "$jpid" 2>/dev/null
    no_journald "journald did not start" "$@"
  fi
  "$@"; rc=$?
  kill "$jpid"; wait "$jpid" 2>/dev/null
  exit "$rc"
' bash "$@"
