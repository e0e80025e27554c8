#!/usr/bin/env bash
# Build the C++ example client: clients/cpp/bin/recommend.
#   stubs:  protoc + grpc_cpp_plugin over proto/onnxrec/v1/recommender.proto -> clients/cpp/gen/
#   binary: g++ recommend.cc + the stubs, linked with pkg-config's grpc++ and protobuf
# Needs (Debian bookworm): g++ pkg-config protobuf-compiler protobuf-compiler-grpc libgrpc++-dev
# libprotobuf-dev (scripts/ci/install_cpp_java.sh cpp). CXXFLAGS overrides the default -O1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../build_common.sh
source "$HERE/../build_common.sh"
GEN="$HERE/gen"
CXX="${CXX:-g++}"
CXXFLAGS="${CXXFLAGS:--O1}"

require_tools "scripts/ci/install_cpp_java.sh cpp" protoc grpc_cpp_plugin pkg-config "$CXX"

rm -rf "$GEN"
mkdir -p "$GEN" "$BIN"
protoc_stubs --cpp_out="$GEN" --grpc_out="$GEN" --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)"

# shellcheck disable=SC2046  # pkg-config's output is a list of flags
"$CXX" -std=c++17 $CXXFLAGS -Wall -Wextra -I"$GEN" \
  "$HERE/recommend.cc" "$GEN/onnxrec/v1/recommender.pb.cc" "$GEN/onnxrec/v1/recommender.grpc.pb.cc" \
  -o "$BIN/recommend.tmp" $(pkg-config --cflags --libs grpc++ protobuf)
mv -f "$BIN/recommend.tmp" "$BIN/recommend"
echo "built $BIN/recommend"
