#!/usr/bin/env bash
# Profiles one service while one benchmark phase runs, and says where its samples went:
# the share of samples with a frame matching each pattern. The profiles in PERFORMANCE.md
# (from session 17 on) were taken this way.
#
#   deploy/profile.sh OUT [PHASE [SERVICE [PATTERN...]]]
#   deploy/profile.sh /tmp/p stream producer crier_producer::dedup cloudevents::encode
#
# PHASE is a crier-bench phase (default stream), SERVICE producer or consumer (default
# producer). It runs `crier-bench --only PHASE --phase-secs 20 --throughput-rounds 1` from
# BIN_DIR (default target/release, built as deploy/bench.sh builds it), waits 8 s into the
# phase, records the service for 8 s with `perf record -F 299 --call-graph dwarf`, and
# writes OUT.log (the bench's output) and OUT.txt (`perf script`). A PATTERN is a substring
# of a symbol, or THREAD:<name> for a thread's samples; with none, a default set is shown.
# Kafka must be running (deploy/kafka.sh start); perf must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out=$1; phase=${2:-stream}; service=${3:-producer}; shift $(( $# < 3 ? $# : 3 ))
bin_dir=${BIN_DIR:-target/release}
command -v perf >/dev/null || { echo "profile.sh: perf is not installed" >&2; exit 1; }

"$bin_dir/crier-bench" --kafka "$(deploy/kafka.sh bootstrap)" --bin-dir "$bin_dir" \
  --only "$phase" --phase-secs 20 --throughput-rounds 1 > "$out.log" 2>&1 &
bench=$!
# The fan-out phase opens its subscriptions first; the others start measuring at once.
ready="phase $phase starting"; [ "$phase" = e2e ] && ready="e2e: publishing"
until grep -q "$ready" "$out.log" 2>/dev/null; do
  kill -0 "$bench" 2>/dev/null || { echo "profile.sh: the bench ended early; see $out.log" >&2; exit 1; }
  sleep 0.2
done
# The last service of that kind to start is the one serving this phase.
pid=$(grep -o "crier-$service pid [0-9]*" "$out.log" | tail -1 | awk '{print $3}')
sleep 8
perf record -q -F 299 --call-graph dwarf,16384 -p "$pid" -o "$out.data" -- sleep 8 2>/dev/null
wait "$bench"
perf script -i "$out.data" > "$out.txt" 2>/dev/null
rm -f "$out.data"

[ $# -gt 0 ] || set -- THREAD:tokio-rt-worker THREAD:rdk:broker "crier_$service::" \
  cloudevents::encode validate_event ProtoDecoder crier_audit crier_producer::dedup
python3 - "$out.txt" "$@" <<'PY'
import sys
path, patterns = sys.argv[1], sys.argv[2:]
samples, hits, frames = 0, [0] * len(patterns), []
def count():
    global samples
    if frames:
        samples += 1
        for i, p in enumerate(patterns):
            hits[i] += any(p in f for f in frames)
with open(path, errors="replace") as f:
    for line in f:
        if not line.strip():
            count(); frames = []
        elif line[0] in " \t":
            parts = line.split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
        else:
            count(); frames = ["THREAD:" + line.split()[0]]
count()
print(f"{samples} samples of the {path} profile")
for p, h in zip(patterns, hits):
    print(f"{100 * h / max(samples, 1):5.1f}%  {p}")
PY
grep -E "stream publish|CPU in %" "$out.log" | sed 's/^ *//' || true
