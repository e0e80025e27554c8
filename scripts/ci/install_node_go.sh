#!/usr/bin/env bash
# Install what the Node.js and Go example clients need (clients/node, clients/go), from Debian
# bookworm's packages and the npm registry. Idempotent and quiet: apt runs only when a package is
# missing, npm only when clients/node/node_modules is missing or older than package(-lock).json.
#
#   scripts/ci/install_node_go.sh          # both
#   scripts/ci/install_node_go.sh node     # node + npm, then `npm install` in clients/node
#   scripts/ci/install_node_go.sh go       # Go, protoc and its Go plugins, Debian's grpc-go sources
#
# Go: the .proto has a proto3 `optional` field (RecommendRequest.exclude_seen), which the old
# protoc-gen-go 1.3.5 of golang-goprotobuf-dev (`--go_out=plugins=grpc:`) refuses. So the stubs are
# made with protoc-gen-go 1.28 (APIv2) + protoc-gen-go-grpc 1.33 and built against
# golang-google-grpc-dev 1.33 with golang/protobuf 1.5 (which replaces golang-goprotobuf-dev).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NODE_DIR="$REPO/clients/node"

GO_PACKAGES=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev)

case "${1:-all}" in
  node) want_node=1 want_go=0 ;;
  go) want_node=0 want_go=1 ;;
  all) want_node=1 want_go=1 ;;
  *) echo "usage: $0 [node|go|all]" >&2; exit 2 ;;
esac

missing=()
if ((want_go)); then
  for pkg in "${GO_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
fi
# Node.js as the machine has it (any source); Debian's nodejs + npm only when node or npm is absent.
if ((want_node)) && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if ((${#missing[@]})); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
  echo "install_node_go: installing ${missing[*]}"
  # wait (up to 10 min) for another apt/dpkg run instead of failing on its lock
  apt_opts=(-qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  if ! { $SUDO apt-get "${apt_opts[@]}" update &&
    $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install_node_go: apt-get failed" >&2
    exit 1
  fi
fi

if ((want_node)); then
  stamp="$NODE_DIR/node_modules/.package-lock.json"
  if [[ ! -f $stamp || $stamp -ot $NODE_DIR/package.json || $stamp -ot $NODE_DIR/package-lock.json ]]; then
    echo "install_node_go: npm install in clients/node"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
fi
echo "install_node_go: done"
