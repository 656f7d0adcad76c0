#!/usr/bin/env bash
# Demo: a sample orders service writes orders + outbox events in the same
# transactions; outbox-relay publishes them to Kafka; the events are read back.
#
#   integration/demo.sh [--events N] [--no-build]
#
# Starts a throwaway PostgreSQL and Kafka in a temp dir and stops them on any
# exit. Installs only what the demo needs (install-deps.sh --demo: no test
# tools) and builds only the relay's binary. --no-build skips both (uses the
# existing binary: $OUTBOX_RELAY_BIN or build/outbox-relay).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env/common.sh
. "$HERE/env/common.sh"

EVENTS=1000
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --events) EVENTS=$2; shift 2 ;;
    --events=*) EVENTS=${1#*=}; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { printf '\n==> %s\n' "$*"; }

if [ $BUILD -eq 1 ]; then
  say "installing dependencies"
  "$HERE/env/install-deps.sh" --demo
  say "building outbox-relay"
  cmake -S "$OUTBOX_REPO" -B "$OUTBOX_REPO/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  # the relay's binary only: not the unit tests nor the examples
  cmake --build "$OUTBOX_REPO/build" -j"$(nproc)" --target outbox-relay >/dev/null
fi
RELAY_BIN="${OUTBOX_RELAY_BIN:-$OUTBOX_REPO/build/outbox-relay}"
[ -x "$RELAY_BIN" ] || die "no relay binary at $RELAY_BIN"
PY="$OUTBOX_VENV/bin/python"
[ -x "$PY" ] || die "no venv at $OUTBOX_VENV: run integration/env/install-deps.sh"

T="$(mktemp -d "${TMPDIR:-/tmp}/outbox-demo.XXXXXX")"
chmod 755 "$T"
RELAY_PID=""
OK=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$RELAY_PID" ] && pid_alive "$RELAY_PID"; then
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    wait_pid_exit "$RELAY_PID" 30 || { kill -KILL "$RELAY_PID" 2>/dev/null || true; }
  fi
  "$HERE/env/kafka.sh" stop "$T" 2>/dev/null || true
  "$HERE/env/pg.sh" stop "$T" 2>/dev/null || true
  if [ $OK -eq 1 ]; then
    rm -rf "$T"
  else
    echo "demo failed; logs kept in $T (relay.log, pg/postgres.log, kafka/kafka.log)" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting PostgreSQL and Kafka in $T"
"$HERE/env/pg.sh" start "$T" &
PG_JOB=$!
"$HERE/env/kafka.sh" start "$T" &
KAFKA_JOB=$!
wait $PG_JOB || die "PostgreSQL did not start"
wait $KAFKA_JOB || die "Kafka did not start"
# shellcheck disable=SC1091
. "$T/env"

cat >"$T/relay.yaml" <<EOF
postgres:
  dsn: "$OUTBOX_PG_DSN"
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  properties: {linger.ms: "5"}
source:
  mode: polling
  polling: {batch_size: 1000, interval_ms: 200}
log: {level: info, format: text}
EOF

say "outbox-relay migrate"
"$RELAY_BIN" migrate --config "$T/relay.yaml"

say "outbox-relay run (background, log in $T/relay.log)"
"$RELAY_BIN" run --config "$T/relay.yaml" >"$T/relay.log" 2>&1 &
RELAY_PID=$!

say "sample orders service: $EVENTS orders, each with its OrderPlaced event in the same transaction"
"$PY" "$HERE/sample_service.py" --dsn "$OUTBOX_PG_DSN" --bootstrap "$KAFKA_BOOTSTRAP" --events "$EVENTS" ||
  { tail -n 20 "$T/relay.log" >&2; die "sample service reported a problem"; }

say "stopping outbox-relay (SIGTERM)"
kill -TERM "$RELAY_PID"
wait_pid_exit "$RELAY_PID" 60 || die "relay did not stop within 60s"
set +e
wait "$RELAY_PID"
RC=$?
set -e
RELAY_PID=""
tail -n 1 "$T/relay.log"
[ $RC -eq 0 ] || die "relay exited $RC"
echo "relay exited 0"
OK=1
