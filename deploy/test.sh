#!/usr/bin/env bash
# Runs every check and test Crier has, against a real Kafka broker started by kafka.sh.
# This is quick-start command (2) in the README, and what .ci/run calls.
#
#   deploy/test.sh            fmt, clippy, every test target on real Kafka, then the
#                             benchmark's quick mode as a smoke test (debug build; its
#                             figures are printed, not judged; CRIER_SKIP_BENCH=1 skips it)
#
# A broker that is already running (deploy/kafka.sh status) is used and left running;
# otherwise one is started and stopped again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test.sh: $*" >&2; }

started_kafka=0
finish() {
  if [ "$started_kafka" = 1 ]; then deploy/kafka.sh stop || true; fi
}
trap finish EXIT

say "formatting (cargo fmt --check)"
cargo fmt --all -- --check
say "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if ! deploy/kafka.sh status >/dev/null 2>&1; then
  deploy/kafka.sh start
  started_kafka=1
fi
export CRIER_TEST_KAFKA="$(deploy/kafka.sh bootstrap)"

say "tests (cargo test --workspace) against Kafka at $CRIER_TEST_KAFKA"
log=.cache/test-output.log
mkdir -p .cache
# The fault suite runs the service binaries as child processes.
cargo build --bins --locked
set +e
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" = 0 ] && [ "${CRIER_SKIP_BENCH:-0}" != 1 ]; then
  say "benchmark smoke test (deploy/bench.sh --quick on debug binaries; figures not judged)"
  CRIER_BENCH_PROFILE=dev deploy/bench.sh --quick --json .cache/bench-quick.json || status=$?
fi
# One closing line for the whole run: the sum of every test binary's result line.
awk '/^test result:/ { p += $4; f += $6 } END { printf "crier: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
