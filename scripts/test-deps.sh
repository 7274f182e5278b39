#!/usr/bin/env bash
# System packages the test suite needs (Debian): PostgreSQL for the distributed-study test,
# Chromium for the report's browser test. Safe to run again.
set -euo pipefail
need=()
command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
# any browser tests/report/test_browser.py runs counts (GitHub's Ubuntu runners ship google-chrome)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || { echo "test-deps.sh: install ${need[*]} yourself (no apt-get here)" >&2; exit 1; }
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  pkgs=()
  for p in "${need[@]}"; do
    # Debian's package; Ubuntu ships Chromium as a snap (no deb candidate): install a browser
    # yourself there, or the browser test skips (and fails under CI=true)
    candidate=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p' || true)  # sed reads it all (grep -q under pipefail: SIGPIPE)
    if [ "$p" = chromium ] && { [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; }; then
      echo "test-deps.sh: no chromium package here (Ubuntu: a snap); install chromium or google-chrome yourself" >&2
      continue
    fi
    pkgs+=("$p")
  done
  [ ${#pkgs[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
