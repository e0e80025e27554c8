#!/usr/bin/env bash
# Generate the Go stubs from ../../proto and build bin/recommend, in GOPATH mode against
# Debian's Go packages (no module proxy needed). Needs: protoc, protoc-gen-go, protoc-gen-go-grpc,
# go, and the grpc/protobuf sources under /usr/share/gocode (scripts/ci/install_node_go.sh installs them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
gopath="$here/.gopath"

for tool in protoc protoc-gen-go protoc-gen-go-grpc go; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build.sh: $tool not found (run scripts/ci/install_node_go.sh)" >&2
    exit 1
  fi
done

# Stubs land at $gopath/src/onnxrec/gen/go/onnxrec/v1, the proto's go_package import path.
rm -rf "$gopath/src/onnxrec"
mkdir -p "$gopath/src" "$here/bin"
if ! protoc -I "$repo/proto" \
  --go_out="$gopath/src" \
  --go-grpc_out="$gopath/src" \
  "$repo/proto/onnxrec/v1/recommender.proto"; then
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
cd "$here"
go build -trimpath -o bin/recommend ./cmd/recommend
