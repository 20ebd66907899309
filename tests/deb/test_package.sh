#!/usr/bin/env bash
# tests/deb/test_package.sh [DEB] — install the dgd .deb in a fresh Debian 13 root and check it.
#
# DEB is the package .ci/build-deb made (default: $DGD_DEB). A fresh root comes from
# .ci/trixie-root (its cache: seconds; no cache: a few minutes), and dgd is not in it. Every
# command runs in a chroot inside a private mount namespace (nothing leaks onto the host) and a
# private network namespace: the install must need nothing beyond what the root already holds,
# the way `apt install ./dgd_..._all.deb` needs nothing but Debian's packages.
#
# Checks, one line each (PASS or FAIL with the reason): apt installs dgd alone and offline;
# `dgd --version`; `dgd check-config -c /etc/dgd.toml` (no key: exit 78 naming it; with a key
# and --no-device: exit 0); the unit in /usr/lib/systemd/system (ExecStart, the API-key
# condition, the notify-reload drop-in, `systemd-analyze verify` silent, `security` <= 2.0, enabled); /etc/dgd.toml is a
# conffile; the postinst note; a reinstall keeps a changed config and the key; remove keeps
# config, key and state; purge removes them (but not files of the admin's own in /etc/dgd).
# No systemd runs in a chroot, so nothing is started: tests/system/ boots the package under
# systemd. Run as root. Exit status: 0 if every check passed.
# The checks are shell conditions in single quotes, evaluated later by check(); the listings
# in failure messages are for people to read.
# shellcheck disable=SC2016,SC2012
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
deb=${1:-${DGD_DEB:-}}
[ -n "$deb" ] || { echo "usage: $0 DEB (or DGD_DEB=DEB $0)" >&2; exit 2; }
[ -f "$deb" ] || { echo "test_package: no such file: $deb" >&2; exit 2; }
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
[ "$(id -u)" -eq 0 ] || { echo "test_package: run me as root (chroot, unshare)" >&2; exit 2; }

t0=$(date +%s)
work=$(mktemp -d /tmp/dgd-test-deb.XXXXXX)
# The chroot's mounts live in private namespaces and vanish with them; should one ever show up
# here, refuse to delete rather than recurse into a mounted /dev.
cleanup() {
  if grep -qF " $work/" /proc/self/mountinfo; then
    echo "test_package: something is still mounted under $work; not deleting it" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
root=$work/root
"$repo/.ci/trixie-root" "$root" >/dev/null
cp "$deb" "$root/tmp/"
pkg=/tmp/$(basename "$deb")
version=$(dpkg-deb -f "$deb" Version)
echo "test_package: $(basename "$deb") in a fresh trixie root ($(( $(date +%s) - t0 )) s to unpack)"

# Run a shell command in the root as root, offline, in private mount and network namespaces.
in_root() {
  # shellcheck disable=SC2016  # the inner script expands its own arguments
  unshare --mount --net --propagation private -- /bin/sh -ec '
    root=$1
    shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/sh -c "$1"
  ' sh "$root" "$1"
}

failures=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; failures=$((failures + 1)); }
# check NAME SHELL-CONDITION: PASS if the condition (run on the host, paths under $root) holds.
check() {
  if eval "$2"; then pass "$1"; else fail "$1" "${3:-not true: $2}"; fi
}
# run_in NAME COMMAND: run COMMAND in the root; its output lands in $out and its status in $rc.
out=
rc=0
run_in() {
  rc=0
  out=$(in_root "$1" 2>&1) || rc=$?
}

# --- install ---
run_in "apt-get install -s $pkg"
inst=$(printf '%s\n' "$out" | grep -c '^Inst ' || true)
check "apt would install dgd alone (every dependency is already in the root)" \
  '[ "$rc" -eq 0 ] && [ "$inst" -eq 1 ] && printf "%s\n" "$out" | grep -q "^Inst dgd "' \
  "rc=$rc, $inst packages: $(printf '%s\n' "$out" | grep '^Inst ' | tr '\n' ' ')"

run_in "apt-get install -y $pkg"
install_out=$out
check "apt-get install -y ./$(basename "$deb") offline" '[ "$rc" -eq 0 ]' "rc=$rc: $out"
check "the postinst tells the admin where the key goes and to start dgd" \
  'printf "%s\n" "$install_out" | grep -q "/etc/dgd/api-key" &&
   printf "%s\n" "$install_out" | grep -q "systemctl start dgd"' "no note in: $install_out"

run_in "dgd --version"
check "dgd --version says $version" '[ "$rc" -eq 0 ] && [ "$out" = "dgd $version" ]' \
  "rc=$rc, output: $out"

run_in "head -1 /usr/bin/dgd; python3 -c 'import dgd, sys; print(dgd.__file__)'"
check "/usr/bin/dgd runs Debian's python3 on dgd in /usr/lib/python3/dist-packages" \
  'printf "%s\n" "$out" | grep -qx "#! */usr/bin/python3" &&
   printf "%s\n" "$out" | grep -qx "/usr/lib/python3/dist-packages/dgd/__init__.py"' "$out"

run_in "dgd check-config -c /etc/dgd.toml"
check "dgd check-config -c /etc/dgd.toml without a key: exit 78, names the key, no traceback" \
  '[ "$rc" -eq 78 ] && printf "%s\n" "$out" | grep -q "no Deepgram API key found" &&
   ! printf "%s\n" "$out" | grep -q Traceback' "rc=$rc: $out"

run_in "DEEPGRAM_API_KEY=test-key-0123456789 dgd check-config -c /etc/dgd.toml --no-device"
check "dgd check-config with a key (--no-device): exit 0, the key redacted" \
  '[ "$rc" -eq 0 ] && ! printf "%s\n" "$out" | grep -q test-key-0123456789' "rc=$rc: $out"

# --- the unit ---
unit=$root/usr/lib/systemd/system/dgd.service
check "the unit is /usr/lib/systemd/system/dgd.service" '[ -f "$unit" ]'
check "ExecStart=/usr/bin/dgd run --config /etc/dgd.toml, nothing of /opt/dgd" \
  'grep -qx "ExecStart=/usr/bin/dgd run --config /etc/dgd.toml" "$unit" &&
   ! grep -q "/opt/dgd" "$unit"' "$(grep -n 'ExecStart\|/opt' "$unit" || true)"
check "ConditionPathExists=/etc/dgd/api-key (no start, no restart loop, before the key)" \
  'grep -qx "ConditionPathExists=/etc/dgd/api-key" "$unit"'
dropin=$root/usr/lib/systemd/system/dgd.service.d/notify-reload.conf
check "the drop-in dgd.service.d/notify-reload.conf: Type=notify-reload, no ExecReload kill" \
  'cmp -s "$repo/systemd/notify-reload.conf" "$dropin" && grep -qx "Type=notify-reload" "$dropin" &&
   grep -qx "ExecReload=" "$dropin"' "$(ls -l "$dropin" 2>&1)"
# verify reads dgd.service.d/ beside the unit: systemd 257 must accept the drop-in too.
run_in "systemd-analyze verify /usr/lib/systemd/system/dgd.service"
check "systemd-analyze verify is silent" '[ "$rc" -eq 0 ] && [ -z "$out" ]' "rc=$rc: $out"
run_in "systemd-analyze security --offline=true --threshold=20 /usr/lib/systemd/system/dgd.service"
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for dgd.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security --offline=true: ${score:-?} <= 2.0" '[ "$rc" -eq 0 ] && [ -n "$score" ]' \
  "rc=$rc: $(printf '%s\n' "$out" | tail -3)"
wants=$root/etc/systemd/system/multi-user.target.wants/dgd.service
check "enabled (dh_installsystemd): multi-user.target.wants/dgd.service" \
  '[ "$(readlink "$wants")" = /usr/lib/systemd/system/dgd.service ]' "$(ls -l "$wants" 2>&1)"

# --- config, key directory, docs ---
run_in "dpkg-query -W -f='\${Conffiles}' dgd"
check "/etc/dgd.toml is a conffile" 'printf "%s\n" "$out" | grep -q "^ /etc/dgd.toml "' "$out"
check "/etc/dgd is root's alone (0700) and holds no key yet" \
  '[ "$(stat -c %a:%U "$root/etc/dgd")" = 700:root ] && [ ! -e "$root/etc/dgd/api-key" ]' \
  "$(stat -c %a:%U "$root/etc/dgd" 2>&1); $(ls -A "$root/etc/dgd" 2>&1)"
check "docs and manual page installed" \
  '[ -f "$root/usr/share/doc/dgd/README.md.gz" ] && [ -f "$root/usr/share/doc/dgd/DEBIAN.md.gz" ] &&
   [ -f "$root/usr/share/doc/dgd/copyright" ] && [ -f "$root/usr/share/man/man1/dgd.1.gz" ]' \
  "$(ls "$root/usr/share/doc/dgd" 2>&1 | tr '\n' ' ')"
check "nothing outside Debian's places (no /opt/dgd, no /usr/local)" \
  '[ ! -e "$root/opt/dgd" ] && [ -z "$(find "$root/usr/local" -type f 2>/dev/null)" ]'

# --- upgrade (a reinstall takes the same maintainer-script path) ---
echo '# changed by the admin' >>"$root/etc/dgd.toml"
(umask 077 && echo test-key-0123456789 >"$root/etc/dgd/api-key")
run_in "apt-get install -y --reinstall $pkg"
check "upgrade: runs without a prompt" '[ "$rc" -eq 0 ]' "rc=$rc: $out"
check "upgrade: keeps the admin's /etc/dgd.toml and the key" \
  'tail -1 "$root/etc/dgd.toml" | grep -q "changed by the admin" &&
   grep -q test-key "$root/etc/dgd/api-key"'
check "upgrade: no key note once the key exists" \
  '! printf "%s\n" "$out" | grep -q "does not start until"' "$out"

# --- remove ---
mkdir -p "$root/var/lib/private/dgd"
echo '{}' >"$root/var/lib/private/dgd/transcripts.jsonl"
ln -sfn private/dgd "$root/var/lib/dgd"
run_in "apt-get remove -y dgd"
check "remove: succeeds" '[ "$rc" -eq 0 ]' "rc=$rc: $out"
check "remove: program and unit gone" \
  '[ ! -e "$root/usr/bin/dgd" ] && [ ! -e "$unit" ] && [ ! -d "$root/usr/lib/python3/dist-packages/dgd" ]'
check "remove: keeps /etc/dgd.toml, /etc/dgd/api-key and /var/lib/dgd" \
  '[ -f "$root/etc/dgd.toml" ] && [ -f "$root/etc/dgd/api-key" ] &&
   [ -f "$root/var/lib/private/dgd/transcripts.jsonl" ] && [ -L "$root/var/lib/dgd" ]'

# --- purge (after remove), with a file of the admin's own in /etc/dgd ---
echo notes >"$root/etc/dgd/notes.txt"
run_in "apt-get purge -y dgd"
check "purge: succeeds" '[ "$rc" -eq 0 ]' "rc=$rc: $out"
check "purge: /etc/dgd.toml, the key and the state (/var/lib/dgd, /var/lib/private/dgd) gone" \
  '[ ! -e "$root/etc/dgd.toml" ] && [ ! -e "$root/etc/dgd/api-key" ] &&
   [ ! -e "$root/var/lib/private/dgd" ] && [ ! -L "$root/var/lib/dgd" ] && [ ! -e "$root/var/lib/dgd" ]' \
  "$(ls -la "$root/etc/dgd.toml" "$root/etc/dgd" "$root/var/lib/dgd" "$root/var/lib/private" 2>&1)"
check "purge: keeps the admin's other files in /etc/dgd" '[ -f "$root/etc/dgd/notes.txt" ]'
check "purge: the enablement symlink is gone" '[ ! -e "$wants" ] && [ ! -L "$wants" ]'
run_in "dpkg-query -W -f='\${db:Status-Status}' dgd"
check "purge: dpkg no longer knows dgd" '[ "$out" != installed ] && [ "$out" != config-files ]' "$out"

# --- install, then purge directly ---
rm "$root/etc/dgd/notes.txt"
run_in "apt-get install -y $pkg && apt-get purge -y dgd"
check "install then purge: leaves no /etc/dgd, /etc/dgd.toml" \
  '[ "$rc" -eq 0 ] && [ ! -e "$root/etc/dgd" ] && [ ! -e "$root/etc/dgd.toml" ]' "rc=$rc: $out"

echo "test_package: $failures failed, in $(( $(date +%s) - t0 )) s"
[ "$failures" -eq 0 ]
