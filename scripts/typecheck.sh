#!/usr/bin/env bash
# mypy over the installed package layout: pyproject maps onnxrec.trainer, .exporter, .server and
# .clients onto top-level folders, which mypy cannot follow from the source tree, so imports across
# the stages would be unchecked. This lays the package out as it is installed (links in a temporary
# folder) and checks it as one package, `onnxrec`.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MYPY="${1:-$REPO/.venv/bin/mypy}"
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir "$SHIM/onnxrec"
for entry in "$REPO"/onnxrec/*; do
  ln -s "$entry" "$SHIM/onnxrec/$(basename "$entry")"
done
for stage in trainer exporter server clients; do
  ln -s "$REPO/$stage" "$SHIM/onnxrec/$stage"
done
cd "$SHIM"
"$MYPY" --config-file "$REPO/pyproject.toml" --cache-dir "$REPO/.mypy_cache" -p onnxrec
