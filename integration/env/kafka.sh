#!/usr/bin/env bash
# Throwaway single-node Kafka (KRaft, broker+controller) for tests and demos.
# Needs the jars fetched by install-deps.sh.
#
#   kafka.sh start DIR     first start: formats DIR/kafka on two free 127.0.0.1
#                          ports; later starts reuse the same ports and data
#   kafka.sh stop DIR      SIGTERM by pid (controlled shutdown), waits for exit
#                          (KAFKA_STOP_MODE=kill for SIGKILL)
#   kafka.sh restart DIR
#
# After start, DIR/env (shell-sourceable) has KAFKA_BOOTSTRAP=127.0.0.1:PORT.
# Broker log: DIR/kafka/kafka.log (stdout/stderr of the JVM: DIR/kafka/kafka.out).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"

server_args "$@"
KD="$DIR/kafka"
PROPS="$KD/server.properties"
PIDF="$KD/kafka.pid"
JARDIR="$(kafka_jar_dir)"

java_cp() { echo "$JARDIR/*"; }

kafka_pid() { [ -f "$PIDF" ] && cat "$PIDF" || true; }

write_config() {
  local port=$1 cport=$2
  mkdir -p "$KD"
  cat >"$PROPS" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KD/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
num.partitions=6
default.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.flush.interval.messages=9223372036854775807
EOF
  cat >"$KD/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KD/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.req.name = kafka.request.logger
logger.req.level = WARN
EOF
  echo "$port $cport" >"$KD/ports"
}

format_storage() {
  local cluster_id
  # Kafka's own random-uuid, minus a JVM start: url-safe base64 of 16 random
  # bytes, never starting with '-' (it would be read as an option).
  cluster_id=$("$(outbox_python)" -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"):
        print(s)
        break')
  java -Dlog4j2.configurationFile="$KD/log4j2.properties" -cp "$(java_cp)" kafka.tools.StorageTool \
    format -t "$cluster_id" -c "$PROPS" >"$KD/format.log" 2>&1 ||
    { cat "$KD/format.log" >&2; die "kafka storage format failed"; }
}

# Wait until the broker answers a metadata request (kcat), or the JVM died.
wait_ready() {
  local pid=$1 port=$2 deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! pid_alive "$pid"; then
      log "kafka (pid $pid) exited during start-up"
      return 1
    fi
    if timeout 10 kcat -L -b "127.0.0.1:$port" -m 3 2>/dev/null | grep -q ' 1 brokers:'; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "kafka not ready on port $port after ${START_TIMEOUT}s"
      return 1
    fi
    sleep 0.2
  done
}

launch() {
  # setsid: own session, so terminal signals to the caller do not reach it.
  # Not a process-group leader here (no job control), so setsid execs in place
  # and $! is the JVM's pid.
  setsid java -Xms256m -Xmx512m -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KD/log4j2.properties" \
    -cp "$(java_cp)" kafka.Kafka "$PROPS" >>"$KD/kafka.out" 2>&1 </dev/null &
  echo $! >"$PIDF"
}

do_start() {
  [ -f "$JARDIR/.complete" ] || die "Kafka jars missing in $JARDIR: run integration/env/install-deps.sh"
  local fresh=0 port cport pid
  if [ ! -f "$KD/data/meta.properties" ]; then
    rm -rf "$KD"
    read -r port cport <<<"$(free_ports 2)"
    write_config "$port" "$cport"
    format_storage
    fresh=1
  fi
  read -r port cport <"$KD/ports"
  pid=$(kafka_pid)
  if pid_alive "$pid"; then
    log "already running (pid $pid)"
  else
    launch
    pid=$(kafka_pid)
    if ! wait_ready "$pid" "$port"; then
      tail -n 30 "$KD/kafka.log" "$KD/kafka.out" >&2 2>/dev/null || true
      do_stop >/dev/null 2>&1 || true
      [ $fresh -eq 1 ] && grep -qi 'address already in use' "$KD/kafka.log" "$KD/kafka.out" 2>/dev/null &&
        die "port taken between picking and binding; run start again"
      die "kafka did not start (log: $KD/kafka.log)"
    fi
  fi
  env_set "$DIR" KAFKA_BOOTSTRAP="127.0.0.1:$port"
  log "kafka up on 127.0.0.1:$port (pid $pid, dir $KD)"
}

do_stop() {
  local pid sig=TERM
  pid=$(kafka_pid)
  if ! pid_alive "$pid"; then
    log "not running"
    return 0
  fi
  [ "${KAFKA_STOP_MODE:-term}" = kill ] && sig=KILL
  kill -s "$sig" "$pid"
  if ! wait_pid_exit "$pid" "$STOP_TIMEOUT"; then
    log "kafka (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
    kill -s KILL "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" 10 || die "kafka pid $pid does not exit"
  fi
  rm -f "$PIDF"
  log "kafka stopped (pid $pid)"
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop && do_start ;;
  *) usage ;;
esac
