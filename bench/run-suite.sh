#!/usr/bin/env bash
# Runs the benchmark suite of docs/benchmarks.md: max rate for 100k messages, then fixed rates
# of 5k, 10k and 20k msg/s for 10 s each, in-process. Writes one JSON report per run to
# $OUT (default bench/results) and prints the human-readable reports.
#
#   bench/run-suite.sh                 # build (release) and run everything
#   WAIT_IDLE=300 bench/run-suite.sh   # first wait up to 300 s per run for a quiet machine
#
# CARGO_TARGET_DIR is honoured (set it to keep the build apart from other work).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results}
WAIT_IDLE=${WAIT_IDLE:-0}
mkdir -p "$OUT"

cargo build --release -p switchyard-bench
BIN=${CARGO_TARGET_DIR:-target}/release/switchyard-bench

# Busy share (percent) of all CPUs over one second, from /proc/stat.
busy_percent() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep 1
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local total=0 idle
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

wait_idle() {
  [ "$WAIT_IDLE" -gt 0 ] || return 0
  local waited=0 busy
  while [ "$waited" -lt "$WAIT_IDLE" ]; do
    busy=$(busy_percent)
    if [ "$busy" -le 10 ]; then return 0; fi
    echo "machine ${busy}% busy; waiting for it to be quiet" >&2
    sleep 4
    waited=$((waited + 5))
  done
  echo "machine still busy after ${WAIT_IDLE}s; running anyway" >&2
}

run() {
  local name=$1
  shift
  wait_idle
  echo "=== $name: $BIN $*" >&2
  "$BIN" --label "$name" --json-out "$OUT/$name.json" --quiet "$@"
  echo
}

run max-100k --rate max --messages 100000
run rate-5k --rate 5000 --duration 10
run rate-10k --rate 10000 --duration 10
run rate-20k --rate 20000 --duration 10
