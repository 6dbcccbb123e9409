#!/usr/bin/env bash
# Runs a real single-node Apache Kafka 4.1.1 broker (KRaft, no ZooKeeper) on 127.0.0.1
# without Docker, from jars Maven resolves off Maven Central (deploy/kafka/pom.xml).
# It exists so developers and the integration tests get a real broker with only a JDK and
# Maven installed. Idempotent: safe to call `start` repeatedly. See `deploy/kafka.sh help`.
set -euo pipefail

KAFKA_VERSION=4.1.1
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname -- "$SCRIPT_DIR")

CACHE_DIR=${CRIER_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crier/kafka-$KAFKA_VERSION}
KAFKA_DIR=${CRIER_KAFKA_DIR:-$REPO_DIR/.cache/kafka}
PORT=${CRIER_KAFKA_PORT:-9092}
CONTROLLER_PORT=${CRIER_KAFKA_CONTROLLER_PORT:-9093}
HEAP=${CRIER_KAFKA_HEAP:--Xms256m -Xmx1g}
# The collector: G1 with Kafka's own start script's flags. Shenandoah
# (CRIER_KAFKA_GC=-XX:+UseShenandoahGC) pauses the broker far less (a median 0.1 ms
# against G1's 10-24 ms), but on a quiet host it made e2e latency worse, not better:
# p99 88-95 ms against G1's 50-55 ms, with the live reader's fetches slower at the median
# too (PERFORMANCE.md, session 14). Unary latency was the same on both.
GC=${CRIER_KAFKA_GC:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35}
START_TIMEOUT=${CRIER_KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=30
HOST=127.0.0.1

CACHE_MARKER=$CACHE_DIR/.complete
CONFIG=$KAFKA_DIR/server.properties
LOG4J_CONFIG=$KAFKA_DIR/log4j2.properties
DATA_DIR=$KAFKA_DIR/data
LOG_DIR=$KAFKA_DIR/logs
BROKER_LOG=$LOG_DIR/broker.log
STDOUT_LOG=$LOG_DIR/broker.out
PID_FILE=$KAFKA_DIR/kafka.pid

if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then JAVA=$JAVA_HOME/bin/java; else JAVA=java; fi

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
  cat <<EOF
Usage: deploy/kafka.sh [COMMAND]

Runs a single-node Apache Kafka $KAFKA_VERSION broker (KRaft) on $HOST, no Docker needed.
Requires Java 17+ and Maven (only for the first download).

Commands:
  start      download jars if missing, format storage once, start, wait until ready (default)
  stop       stop the broker (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s); ok if not running
  restart    stop, then start
  status     print whether the broker is running; exit 0 if running, 3 if not
  logs       follow the broker log (tail -F)
  bootstrap  print the bootstrap address ($HOST:PORT)
  help       show this help

Environment:
  CRIER_KAFKA_PORT              client (PLAINTEXT) port            [9092]
  CRIER_KAFKA_CONTROLLER_PORT   KRaft controller port              [9093]
  CRIER_KAFKA_DIR               config, data, logs and pid file    [<repo>/.cache/kafka]
  CRIER_KAFKA_CACHE             downloaded jars                    [\${XDG_CACHE_HOME:-~/.cache}/crier/kafka-$KAFKA_VERSION]
  CRIER_KAFKA_HEAP              JVM heap flags                     [-Xms256m -Xmx1g]
  CRIER_KAFKA_GC                JVM collector flags                [G1, with Kafka's own flags]
  CRIER_KAFKA_START_TIMEOUT     seconds to wait for readiness      [90]
  CRIER_KAFKA_RESET=1           with start/restart: wipe CRIER_KAFKA_DIR first (all topics lost)
  JAVA_HOME                     JDK to use (else java on PATH)

Kafka CLI tools run from the same jars, e.g.:
  java -cp "$CACHE_DIR/*" org.apache.kafka.tools.TopicCommand --bootstrap-server $HOST:9092 --list
EOF
}

# --- process state ---------------------------------------------------------------------

# Prints the broker pid if the pid file names a live kafka.Kafka process using our config.
running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid args
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  args=$(ps -p "$pid" -o args= 2>/dev/null) || return 1
  [[ $args == *kafka.Kafka*"$CONFIG"* ]] || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# --- setup -----------------------------------------------------------------------------

check_java() {
  command -v "$JAVA" >/dev/null || die "java not found (need Java 17+; set JAVA_HOME or PATH)"
  local v
  v=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [[ -n $v && $v -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, found: $("$JAVA" -version 2>&1 | head -n1)"
}

fetch_jars() {
  [[ -f $CACHE_MARKER ]] && return 0
  command -v mvn >/dev/null || die "mvn (Maven) not found; it is needed once to download the Kafka jars"
  say "downloading Kafka $KAFKA_VERSION jars from Maven Central into $CACHE_DIR (once, ~30 s)"
  local tmp=$CACHE_DIR.tmp.$$
  rm -rf "$tmp" "$CACHE_DIR"
  mkdir -p "$tmp"
  if ! mvn -q -B -f "$SCRIPT_DIR/kafka/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "Maven could not resolve the Kafka jars (output above)"
  fi
  rm -f "$tmp.log"
  mv "$tmp" "$CACHE_DIR"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$CACHE_MARKER"
}

write_config() {
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  cat >"$CONFIG" <<EOF
# Generated by deploy/kafka.sh on every start; edit the script, not this file.
# Single-node KRaft: this process is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR

# Topics are created explicitly (by the services or tests), never by a typo'd consumer.
auto.create.topics.enable=false
num.partitions=6
default.replication.factor=1
min.insync.replicas=1

# One node: every internal topic has a single replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Consumers join without the default 3 s wait for more members.
group.initial.rebalance.delay.ms=0

# Small machine (2 cores): fewer threads and buffers than the production defaults.
num.network.threads=2
num.io.threads=2
background.threads=4
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432

# Local development data: keep a day, in 64 MiB segments so retention can act.
log.retention.hours=24
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
EOF

  cat >"$LOG4J_CONFIG" <<EOF
# Generated by deploy/kafka.sh: INFO to $BROKER_LOG, WARN and above also to stdout
# (which the script redirects to $STDOUT_LOG together with any JVM crash output).
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = warn

appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $BROKER_LOG
appender.file.filePattern = $BROKER_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3

rootLogger.level = info
rootLogger.appenderRef.console.ref = console
rootLogger.appenderRef.file.ref = file

# Noisy at INFO: per-request, per-partition and per-segment chatter.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.requestchannel.name = kafka.network.RequestChannel\$
logger.requestchannel.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.storage.name = org.apache.kafka.storage.internals
logger.storage.level = warn
logger.unifiedlog.name = kafka.log.UnifiedLog
logger.unifiedlog.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = warn
# The full KafkaConfig dump (x3, ~900 lines) per start; server.properties is next to this file.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
EOF
}

format_storage() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local cluster_id out
  cluster_id=$("$JAVA" -cp "$CACHE_DIR/*" kafka.tools.StorageTool random-uuid)
  say "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
  if ! out=$("$JAVA" -cp "$CACHE_DIR/*" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" 2>&1); then
    printf '%s\n' "$out" >&2
    die "kafka-storage format failed"
  fi
}

# --- commands --------------------------------------------------------------------------

cmd_start() {
  local pid
  if [[ ${CRIER_KAFKA_RESET:-0} == 1 ]]; then
    if running_pid >/dev/null; then cmd_stop; fi
    [[ -n $KAFKA_DIR && $KAFKA_DIR != / && $KAFKA_DIR != "$HOME" ]] || die "refusing to wipe '$KAFKA_DIR'"
    say "CRIER_KAFKA_RESET=1: wiping $KAFKA_DIR"
    rm -rf "$KAFKA_DIR"
  fi
  if pid=$(running_pid); then
    say "already running (pid $pid) on $HOST:$PORT"
    return 0
  fi
  if [[ -f $PID_FILE ]]; then
    say "removing stale pid file (pid $(<"$PID_FILE") is gone)"
    rm -f "$PID_FILE"
  fi
  port_open "$PORT" && die "port $HOST:$PORT is already in use by another process (set CRIER_KAFKA_PORT)"
  port_open "$CONTROLLER_PORT" && die "port $HOST:$CONTROLLER_PORT is already in use (set CRIER_KAFKA_CONTROLLER_PORT)"

  check_java
  fetch_jars
  write_config
  format_storage

  # Fresh log per run so the readiness check cannot match a previous run's lines.
  [[ -f $BROKER_LOG ]] && mv -f "$BROKER_LOG" "$BROKER_LOG.prev"
  : >"$BROKER_LOG"
  [[ -f $STDOUT_LOG ]] && mv -f "$STDOUT_LOG" "$STDOUT_LOG.prev"

  say "starting Kafka $KAFKA_VERSION on $HOST:$PORT (controller $CONTROLLER_PORT, data $KAFKA_DIR, collector $GC)"
  # The inner shell records its own pid and then execs java, so the pid file is the
  # broker's pid. nohup (and bash leaving SIGINT ignored for a background job) lets it
  # outlive the calling shell. It stays in the caller's session on purpose: with setsid
  # it had a scheduler autogroup of its own, which CFS treats as one entity against
  # everything else, and under load its collector and request threads waited 100-300 ms
  # for a core (raw Kafka's p99 85-131 ms against 6-7 ms; PERFORMANCE.md, session 10).
  # Every pause is logged to $LOG_DIR/gc.log (two files of 10 MB at most), to check the
  # collector against latency.
  # shellcheck disable=SC2086 # HEAP and GC are lists of JVM flags
  nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" $HEAP $GC -server -XX:+ExplicitGCInvokesConcurrent \
    "-Xlog:gc:file=$LOG_DIR/gc.log:uptime:filecount=2,filesize=10m" \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    -cp "$CACHE_DIR/*" kafka.Kafka "$CONFIG" \
    </dev/null >"$STDOUT_LOG" 2>&1 &

  local start=$SECONDS deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if pid=$(running_pid); then
      if port_open "$PORT" && grep -q 'Kafka Server started' "$BROKER_LOG"; then
        say "ready in $((SECONDS - start))s: pid $pid, bootstrap $HOST:$PORT"
        return 0
      fi
    elif [[ -s $PID_FILE ]] && ! kill -0 "$(<"$PID_FILE")" 2>/dev/null; then
      say "broker exited during startup; last 50 log lines:"
      tail -n 50 "$BROKER_LOG" "$STDOUT_LOG" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 0.5
  done
  say "not ready after ${START_TIMEOUT}s; last 50 log lines of $BROKER_LOG:"
  tail -n 50 "$BROKER_LOG" >&2 || true
  say "the broker may still be starting: 'deploy/kafka.sh status', or 'deploy/kafka.sh stop'"
  exit 1
}

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then
    [[ -f $PID_FILE ]] && rm -f "$PID_FILE"
    say "not running"
    return 0
  fi
  say "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  say "stopped"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    if port_open "$PORT"; then
      say "running (pid $pid), bootstrap $HOST:$PORT, data $KAFKA_DIR"
    else
      say "running (pid $pid) but $HOST:$PORT is not accepting connections yet"
    fi
    return 0
  fi
  say "not running"
  return 3
}

cmd_logs() {
  [[ -f $BROKER_LOG ]] || die "no log yet at $BROKER_LOG (never started?)"
  exec tail -n 100 -F "$BROKER_LOG"
}

case ${1:-start} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  bootstrap) echo "$HOST:$PORT" ;;
  help | -h | --help) usage ;;
  *) usage >&2; die "unknown command '$1'" ;;
esac
