#!/usr/bin/env bash
# Generate the Go stubs from ../../proto and build bin/recommend, in GOPATH mode against
# Debian's Go packages (no module proxy needed). Needs: protoc, protoc-gen-go, protoc-gen-go-grpc,
# go, and the grpc/protobuf sources under /usr/share/gocode (scripts/ci/install_node_go.sh installs them).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../build_common.sh
source "$HERE/../build_common.sh"
gopath="$HERE/.gopath"

require_tools scripts/ci/install_node_go.sh protoc protoc-gen-go protoc-gen-go-grpc go

# Stubs land at $gopath/src/onnxrec/gen/go/onnxrec/v1, the proto's go_package import path.
rm -rf "$gopath/src/onnxrec"
mkdir -p "$gopath/src" "$BIN"
if ! protoc_stubs --go_out="$gopath/src" --go-grpc_out="$gopath/src"; then
  # the .proto has a proto3 `optional` field: protoc-gen-go 1.3.x (golang-goprotobuf-dev) refuses it
  echo "build.sh: protoc failed; it needs protoc-gen-go >= 1.20 and protoc-gen-go-grpc" \
    "(Debian: protoc-gen-go protoc-gen-go-grpc, see scripts/ci/install_node_go.sh)" >&2
  exit 1
fi

export GO111MODULE=off
export GOPATH="$gopath:/usr/share/gocode"
export GOFLAGS=
if [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then
  export GOCACHE="$gopath/cache"
fi
cd "$HERE"
go build -trimpath -o "$BIN/recommend" ./cmd/recommend
