# Sourced (never run) by the example clients' build scripts, clients/<language>/build.sh, once they have
# set HERE to their own folder. It holds what all of them do alike:
#   REPO, PROTO_ROOT, PROTO   the repository, the proto root and the service's .proto under it
#   BIN                       where the client's binary goes (HERE/bin)
#   require_tools HINT TOOL…  stop the build, naming the first TOOL not on PATH and HINT (how to install it)
#   protoc_stubs ARG…         protoc over the service's .proto with ARG… (the language's --*_out, plugin)

REPO="$(cd "$HERE/../.." && pwd)"
PROTO_ROOT="$REPO/proto"
PROTO=onnxrec/v1/recommender.proto
BIN="$HERE/bin"

require_tools() {
  local hint="$1" tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "build.sh: $tool not found; run $hint" >&2
      exit 1
    }
  done
}

protoc_stubs() {
  # proto3 'optional' is stable from protobuf 3.15 on; older protoc releases needed a flag
  local flags=()
  if protoc --help 2>&1 | grep -q experimental_allow_proto3_optional; then
    flags+=(--experimental_allow_proto3_optional)
  fi
  protoc "${flags[@]}" -I"$PROTO_ROOT" "$@" "$PROTO_ROOT/$PROTO"
}
