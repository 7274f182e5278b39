#!/usr/bin/env bash
# Run a command in this checkout on aarch64, emulated: a Debian bookworm arm64 root under
# qemu-user (README, "Tests must not depend on the machine"). On demand, never in CI: it
# needs root, Debian's package mirror and PyPI, and its first run takes ~15 min (torch).
#   bash scripts/as-aarch64.sh python -m pytest -q -n 2
# The root is kept (ROOT, default /tmp/hispec-arm64) and the checkout copied in afresh at
# each run (git's tracked and untracked files, without what .gitignore ignores).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
ROOT=${ROOT:-/tmp/hispec-arm64}
REPO=$(cd "$(dirname "$0")/.." && pwd)

if ! [ -x /usr/bin/qemu-aarch64-static ] || ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true

if ! [ -x "$ROOT/root/venv/bin/python" ]; then
  debootstrap --arch=arm64 --include=python3,python3-venv,ca-certificates bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"  # a proxy's own CA, if any
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --rbind /dev "$ROOT/dev"
if ! mountpoint -q "$ROOT/sys"; then
  # the host's /sys describes x86 CPUs; oneDNN (torch) reads each CPU's MIDR_EL1 at import and
  # crashes without it, so the root gets a /sys holding two Neoverse-N1 cores (QEMU_CPU below)
  mount -t tmpfs tmpfs "$ROOT/sys"
  for c in 0 1; do
    mkdir -p "$ROOT/sys/devices/system/cpu/cpu$c/regs/identification"
    echo 0x00000000410fd0c0 > "$ROOT/sys/devices/system/cpu/cpu$c/regs/identification/midr_el1"
  done
  for f in online possible present; do echo 0-1 > "$ROOT/sys/devices/system/cpu/$f"; done
  mount -o remount,ro "$ROOT/sys"  # as sysfs is, even to root (a test relies on it)
fi

rm -rf "$ROOT/root/hispec" && mkdir -p "$ROOT/root/hispec"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) \
  | tar -xf - -C "$ROOT/root/hispec"
# the same constraints as CI (torch 2.13.0); PIP_FIND_LINKS points at this host's x86 wheels
exec chroot "$ROOT" /usr/bin/env -u PIP_FIND_LINKS -u PIP_CONSTRAINT QEMU_CPU=neoverse-n1 /bin/bash -c '
  set -e
  [ -x /root/venv/bin/python ] || python3 -m venv /root/venv
  . /root/venv/bin/activate
  cd /root/hispec
  PIP_CONSTRAINT=.ci/constraints.txt pip install -q -e ".[test]"
  exec "$@"' bash "$@"
