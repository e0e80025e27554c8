#!/usr/bin/env bash
# Install the toolchains the C++ and Java example clients need (clients/cpp, clients/java),
# from Debian bookworm's packages. Idempotent: apt runs only when a package is missing.
#
#   scripts/ci/install_cpp_java.sh          # both
#   scripts/ci/install_cpp_java.sh cpp      # only the C++ toolchain
#   scripts/ci/install_cpp_java.sh java     # only the Java toolchain
set -euo pipefail

CPP_PACKAGES=(g++ make pkg-config protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev)
# libgrpc-java declares only libopencensus-java as a dependency: the jars grpc-core and grpc-netty
# need at run time (guava, gson, perfmark, netty) and the annotations the generated stubs compile
# against (javax.annotation.Generated, jsr305) are listed here explicitly.
JAVA_PACKAGES=(default-jdk-headless protobuf-compiler protobuf-compiler-grpc-java-plugin libprotobuf-java libgrpc-java
  libguava-java libgoogle-gson-java libperfmark-java libnetty-java libgeronimo-annotation-1.3-spec-java
  libjsr305-java liberror-prone-java)

case "${1:-all}" in
  cpp) wanted=("${CPP_PACKAGES[@]}") ;;
  java) wanted=("${JAVA_PACKAGES[@]}") ;;
  all) wanted=("${CPP_PACKAGES[@]}" "${JAVA_PACKAGES[@]}") ;;
  *) echo "usage: $0 [cpp|java|all]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# drop duplicates (protobuf-compiler is in both lists)
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ((${#missing[@]} == 0)); then
  echo "install_cpp_java: all packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_cpp_java: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_cpp_java: done"
