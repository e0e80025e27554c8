#!/usr/bin/env bash
# Downloads, on this machine, the Python 3.12 manylinux x86_64 wheels that benchmarks/gpu.py needs on the
# lent GPU machine (no network there), into .gpuwheels/ at the repository root (ignored through
# .git/info/exclude), and prints the device commands.
#
# The device image (see /work/.library/device/KINDS.md) already holds torch, numpy, pyarrow, onnx,
# onnxscript, onnx-ir, ml-dtypes, click, tqdm, packaging, typing-extensions, prometheus-client, grpcio
# and protobuf, but not grpcio-health-checking, grpcio-reflection or tomli-w, and its grpcio/protobuf
# may be older than the generated code in onnxrec/v1 requires (grpcio >= 1.85.1, protobuf >= 7.35). So by
# default .gpuwheels/ holds grpcio, protobuf, grpcio-health-checking, grpcio-reflection and tomli-w at
# the versions of this checkout's .venv (about 7.5 MiB), small enough to ride along with the first
# onnxruntime-gpu part (50 MiB) in one upload, whose command installs them and runs gpu.py --check-deps.
#
# --full also fetches the rest of onnxrec's dependencies, for an image that lacks them:
#   .gpuwheels-extra/   onnx, onnxscript, onnx-ir, ml-dtypes, click, tqdm, packaging, typing-extensions,
#                       prometheus-client (about 10.5 MiB; rides along with .ortgpu/part1)
#   .gpuwheels-pyarrow/ pyarrow (about 53 MiB; an upload of its own)
#
# Usage, from the repository root: bash benchmarks/gpu_prepare.sh [--full]
set -euo pipefail

full=0
for arg in "$@"; do
  case "$arg" in
    --full) full=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

top=$(git rev-parse --show-toplevel)
cd "$top"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi

# NAME==VERSION as installed in this checkout's environment (the versions the benchmarks ran with here)
pin() {
  local v
  v=$("$py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true)
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

fetch() {  # fetch DIR PACKAGE...
  local dir=$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  local specs=()
  for p in "$@"; do specs+=("$(pin "$p")"); done
  echo "downloading into $dir: ${specs[*]}"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$dir" "${specs[@]}"
  grep -qxF "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
}

mib() { du -sb "$@" | awk '{s += $1} END {printf "%.1f", s / 1048576}'; }

fetch .gpuwheels grpcio protobuf grpcio-health-checking grpcio-reflection tomli-w
if [ "$full" = 1 ]; then
  fetch .gpuwheels-extra onnx onnxscript onnx-ir ml-dtypes click tqdm packaging typing-extensions prometheus-client
  fetch .gpuwheels-pyarrow pyarrow
fi

echo
ls -l .gpuwheels
echo ".gpuwheels: $(mib .gpuwheels) MiB"
if [ "$full" = 1 ]; then
  echo ".gpuwheels-extra: $(mib .gpuwheels-extra) MiB, .gpuwheels-pyarrow: $(mib .gpuwheels-pyarrow) MiB"
fi

# the working tree travels with every upload (tracked and untracked-not-ignored files), 64 MiB in all
tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{printf "%.1f", $1 / 1048576}')
echo "working tree that travels with each upload: ${tree} MiB"
if [ -d .ortgpu ]; then
  echo "upload 1: .ortgpu/part0 $(mib .ortgpu/part0) MiB + .gpuwheels $(mib .gpuwheels) MiB + tree"
  if [ "$full" = 1 ]; then
    echo "upload 2: .ortgpu/part1 $(mib .ortgpu/part1) MiB + .gpuwheels-extra $(mib .gpuwheels-extra) MiB + tree"
  fi
  echo "last upload: .ortgpu/part4 + NAME $(mib .ortgpu/part4 .ortgpu/NAME) MiB + tree"
else
  echo "no .ortgpu/ yet: run 'bash ../shared/tools/ortgpu/prepare.sh' here first (five parts of the onnxruntime-gpu wheel)"
fi

install='python3 -m pip install -q --no-index --no-deps --target /tmp/site'
echo
echo "Device commands (run tool, one right after another so the machine stays warm; /tmp persists between them):"
echo "  1. carry [\".ortgpu/part0\", \".gpuwheels\"], timeout_s 180:"
echo "       mkdir -p /tmp/ortgpu && cp .ortgpu/part0 /tmp/ortgpu/ && $install .gpuwheels/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu.py --check-deps"
if [ "$full" = 1 ]; then
  echo "  2. carry [\".ortgpu/part1\", \".gpuwheels-extra\"], timeout_s 120:"
  echo "       cp .ortgpu/part1 /tmp/ortgpu/ && $install .gpuwheels-extra/*.whl"
  echo "  3-4. carry [\".ortgpu/partN\"], N = 2, 3, timeout_s 120:"
  echo "       cp .ortgpu/partN /tmp/ortgpu/"
  echo "  4b. carry [\".gpuwheels-pyarrow\"], timeout_s 120:"
  echo "       $install .gpuwheels-pyarrow/*.whl"
else
  echo "  2-4. carry [\".ortgpu/partN\"], N = 1, 2, 3, timeout_s 120:"
  echo "       cp .ortgpu/partN /tmp/ortgpu/"
fi
echo "  5. carry [\".ortgpu/part4\", \".ortgpu/NAME\"], timeout_s 600:"
echo "       cp .ortgpu/part4 /tmp/ortgpu/ && cat /tmp/ortgpu/part? > /tmp/\$(cat .ortgpu/NAME) && $install /tmp/\$(cat .ortgpu/NAME) && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && python3 benchmarks/gpu.py --device cuda 2>&1 | tee \$OUT/gpu.log"
