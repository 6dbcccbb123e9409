#!/usr/bin/env bash
# Quick-start command (1): starts Kafka and both Crier services, runs the demo exchange
# (a department publishes a death registration and a change of address; Middlesbrough
# Council's subscription prints what it receives), then stops what it started.
#
#   deploy/demo.sh            build, start, demo, stop
#   CRIER_DEMO_KEEP=1 deploy/demo.sh   leave Kafka and the services running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "demo.sh: $*" >&2; }
logs=.cache/demo
mkdir -p "$logs"

say "building (cargo build --bins)"
cargo build --bins --locked --quiet

started_kafka=0
pids=()
finish() {
  if [ "${CRIER_DEMO_KEEP:-0}" = 1 ]; then
    say "left running: producer 127.0.0.1:50051, consumer 127.0.0.1:50052 (pids ${pids[*]:-})"
    return
  fi
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ "$started_kafka" = 1 ]; then deploy/kafka.sh stop || true; fi
}
trap finish EXIT

if ! deploy/kafka.sh status >/dev/null 2>&1; then
  deploy/kafka.sh start
  started_kafka=1
fi
export CRIER_KAFKA__BOOTSTRAP_SERVERS="$(deploy/kafka.sh bootstrap)"

# Development credentials for the demo organisations (made once, kept in .cache/pki).
[ -f .cache/pki/ca.pem ] || target/debug/crier dev-certs --out .cache/pki >/dev/null
export CRIER_PKI=.cache/pki

target/debug/crier-producer --config deploy/local/producer.toml >"$logs/producer.log" 2>&1 &
pids+=($!)
target/debug/crier-consumer --config deploy/local/consumer.toml >"$logs/consumer.log" 2>&1 &
pids+=($!)
say "producer pid ${pids[0]} (log $logs/producer.log), consumer pid ${pids[1]} (log $logs/consumer.log)"

target/debug/crier health https://localhost:50051 --wait 60 >&2
target/debug/crier health https://localhost:50052 --wait 60 >&2

target/debug/crier demo --producer https://localhost:50051 --consumer https://localhost:50052
say "done; metrics were at http://127.0.0.1:9464/metrics and :9465/metrics"
