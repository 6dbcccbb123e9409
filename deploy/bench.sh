#!/usr/bin/env bash
# Runs Crier's benchmark (services/bench) in one command: starts Kafka with deploy/kafka.sh
# if it is not running (and stops it again afterwards), builds the release binaries, and
# runs crier-bench with the given arguments against that broker.
#
#   deploy/bench.sh                                  full run (about 5 minutes after building)
#   deploy/bench.sh --quick --json .cache/bench.json CI smoke test (under 2 minutes)
#   deploy/bench.sh --only unary,latency             some phases only
#   deploy/bench.sh --help                           every option of crier-bench
#
# The broker settings of deploy/kafka.sh are honoured (CRIER_KAFKA_PORT,
# CRIER_KAFKA_CONTROLLER_PORT, CRIER_KAFKA_DIR, ...), so a second broker on other ports
# works too. CARGO_TARGET_DIR is honoured as well. Figures are printed, never asserted.
#
# CRIER_BENCH_PROFILE=dev builds and runs debug binaries instead: figures from it mean
# nothing, but deploy/test.sh uses it for the CI smoke test, reusing the test build.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bench.sh: $*" >&2; }

started_kafka=0
finish() {
  if [ "$started_kafka" = 1 ]; then deploy/kafka.sh stop || true; fi
}
trap finish EXIT

for arg in "$@"; do
  if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
    cargo run --quiet --locked -p crier-bench -- --help
    exit 0
  fi
done

profile="${CRIER_BENCH_PROFILE:-release}"
case "$profile" in
  release) build=(--release); bin_sub=release ;;
  dev) build=(); bin_sub=debug ;;
  *) say "CRIER_BENCH_PROFILE must be release or dev, not '$profile'"; exit 2 ;;
esac
say "building $profile binaries (crier-bench, crier-producer, crier-consumer)"
cargo build "${build[@]}" --locked -p crier-bench -p crier-producer -p crier-consumer

if ! deploy/kafka.sh status >/dev/null 2>&1; then
  deploy/kafka.sh start
  started_kafka=1
fi
bootstrap="$(deploy/kafka.sh bootstrap)"
bin_dir="${CARGO_TARGET_DIR:-target}/$bin_sub"

say "running crier-bench against Kafka at $bootstrap"
"$bin_dir/crier-bench" --kafka "$bootstrap" --bin-dir "$bin_dir" "$@"
