#!/usr/bin/env bash
# Build the C++ example client: clients/cpp/bin/recommend.
#   stubs:  protoc + grpc_cpp_plugin over proto/onnxrec/v1/recommender.proto -> clients/cpp/gen/
#   binary: g++ recommend.cc + the stubs, linked with pkg-config's grpc++ and protobuf
# Needs (Debian bookworm): g++ pkg-config protobuf-compiler protobuf-compiler-grpc libgrpc++-dev
# libprotobuf-dev (scripts/ci/install_cpp_java.sh cpp). CXXFLAGS overrides the default -O1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PROTO_ROOT="$REPO/proto"
PROTO=onnxrec/v1/recommender.proto
GEN="$HERE/gen"
BIN="$HERE/bin"
CXX="${CXX:-g++}"
CXXFLAGS="${CXXFLAGS:--O1}"

for tool in protoc grpc_cpp_plugin pkg-config "$CXX"; do
  command -v "$tool" >/dev/null || {
    echo "build.sh: $tool not found; run scripts/ci/install_cpp_java.sh cpp" >&2
    exit 1
  }
done

# proto3 'optional' is stable from protobuf 3.15 on; older protoc releases needed a flag
PROTOC_FLAGS=()
if protoc --help 2>&1 | grep -q experimental_allow_proto3_optional; then
  PROTOC_FLAGS+=(--experimental_allow_proto3_optional)
fi

rm -rf "$GEN"
mkdir -p "$GEN" "$BIN"
protoc "${PROTOC_FLAGS[@]}" -I"$PROTO_ROOT" \
  --cpp_out="$GEN" \
  --grpc_out="$GEN" --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" \
  "$PROTO_ROOT/$PROTO"

# shellcheck disable=SC2046  # pkg-config's output is a list of flags
"$CXX" -std=c++17 $CXXFLAGS -Wall -Wextra -I"$GEN" \
  "$HERE/recommend.cc" "$GEN/onnxrec/v1/recommender.pb.cc" "$GEN/onnxrec/v1/recommender.grpc.pb.cc" \
  -o "$BIN/recommend.tmp" $(pkg-config --cflags --libs grpc++ protobuf)
mv -f "$BIN/recommend.tmp" "$BIN/recommend"
echo "built $BIN/recommend"
