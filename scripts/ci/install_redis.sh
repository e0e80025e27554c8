#!/usr/bin/env bash
# Install redis-server (Debian's package) for the Redis event-store tests
# (tests/test_server_events_redis.py start their own on a free loopback port; nothing is left running).
# Idempotent and quiet: apt runs only when no redis-server is on PATH.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  echo "install_redis: $(redis-server --version | cut -d' ' -f1-3) present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "install_redis: installing redis-server"
# wait (up to 10 min) for another apt/dpkg run instead of failing on its lock
apt_opts=(-qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
if ! { $SUDO apt-get "${apt_opts[@]}" update &&
  $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends redis-server; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "install_redis: apt-get failed" >&2
  exit 1
fi
command -v redis-server >/dev/null || { echo "install_redis: redis-server still not on PATH" >&2; exit 1; }
echo "install_redis: done"
