#!/usr/bin/env bash
# The README's documented path, as a new user runs it, in a fresh clone: make demo; train on ML-100K,
# export, serve, recommend, stop; optionally make test. Repeats it ROUNDS times (fresh clone each round)
# and ends with one line per round and step: its exit status and seconds. Exit 1 if any step failed.
#
#   scripts/readme_path.sh [ROUNDS] [--with-tests]
#
# Needs ../shared/data beside the checkout (or ONNXREC_SHARED_DATA); writes under a temporary folder.
set -uo pipefail
rounds=${1:-1}
with_tests=0
[ "${2:-}" = "--with-tests" ] && with_tests=1
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ONNXREC_SHARED_DATA="$(cd "${ONNXREC_SHARED_DATA:-$src/../shared/data}" && pwd)" || exit 2
export ONNXREC_SHARED_DATA  # the clone has no ../shared beside it
data="$ONNXREC_SHARED_DATA/ml-100k"
work="$(mktemp -d /tmp/onnxrec-readme.XXXXXX)"
results=()
failed=0

step() {  # step ROUND NAME COMMAND...
  local round=$1 name=$2 t0 rc
  shift 2
  t0=$(date +%s)
  "$@" >>"$work/round$round.log" 2>&1
  rc=$?
  results+=("round $round  $name  exit $rc  $(($(date +%s) - t0)) s")
  ((rc == 0)) || failed=1
  return $rc
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for round in $(seq 1 "$rounds"); do
  dir="$work/clone$round"
  git clone -q "$src" "$dir"
  cd "$dir" || exit 1
  step "$round" "make demo" make demo
  bin="$dir/.venv/bin"
  step "$round" "onnxrec train" "$bin/onnxrec" train --data "$data" --out runs/ml100k
  step "$round" "onnxrec export" "$bin/onnxrec" export runs/ml100k --repository repo --name ml100k
  port=$(free_port)
  "$bin/onnxrec" serve --repository repo --port "$port" >"$work/serve$round.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do "$bin/onnxrec" health --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.2; done
  step "$round" "onnxrec recommend" "$bin/onnxrec" recommend --server "127.0.0.1:$port" --user 1
  kill -TERM "$server"
  step "$round" "onnxrec serve (SIGTERM exit)" wait "$server"
  ((with_tests)) && step "$round" "make test" make test
  cd "$src" || exit 1
done
printf '%s\n' "${results[@]}"
echo "logs: $work"
exit $failed
