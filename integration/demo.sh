#!/usr/bin/env bash
# Demo: a sample orders service writes orders + outbox events in the same
# transactions; outbox-relay publishes them to Kafka; the events are read back.
#
#   integration/demo.sh [--events N] [--no-build] [--example python|node|go|java]
#
# Starts a throwaway PostgreSQL and Kafka in a temp dir and stops them on any
# exit. Installs only what the demo needs (install-deps.sh --demo: no test
# tools) and builds only the relay's binary. --no-build skips both (uses the
# existing binary: $OUTBOX_RELAY_BIN or build/outbox-relay).
# --example LANG runs examples/LANG/ instead of the sample service: its producer writes
# three orders and a retried call, the relay publishes them, its consumer applies each
# event once through the inbox; prints the time to the first event applied.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env/common.sh
. "$HERE/env/common.sh"

EVENTS=1000
EXAMPLE=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --events) EVENTS=$2; shift 2 ;;
    --events=*) EVENTS=${1#*=}; shift ;;
    --no-build) BUILD=0; shift ;;
    --example) EXAMPLE=${2:-}; shift 2 ;;
    --example=*) EXAMPLE=${1#*=}; shift ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

case $EXAMPLE in
  "" | python | node | go | java) ;;
  *) echo "--example: one of python, node, go, java (got '$EXAMPLE')" >&2; exit 2 ;;
esac

say() { printf '\n==> %s\n' "$*"; }
START_S=$SECONDS

# examples/LANG/, as its README says: build, producer (three orders and a retried call), the
# relay publishes, consumer (each event applied once through the inbox).
example_build() {
  case $1 in
    python) ;;
    node) npm ci --cache "$OUTBOX_CACHE/npm" --no-audit --no-fund >/dev/null ;;
    go) PATH="$PATH:/usr/local/go/bin" GOMODCACHE="$OUTBOX_CACHE/go/mod" GOCACHE="$OUTBOX_CACHE/go/build" GOFLAGS=-buildvcs=false \
          go build -o bin/ ./producer ./consumer ;;
    java) mvn -q -B -Dstyle.color=never "-Dmaven.repo.local=$CACHE/m2" package ;;
  esac
}
example_cmd() { # LANG producer|consumer
  case $1 in
    python) echo "$PY $2.py" ;;
    node) echo "node $2.js" ;;
    go) echo "./bin/$2" ;;
    java) echo "java -cp target/classes:target/lib/* outbox.example.${2^}" ;;
  esac
}
run_example() {
  local lang=$1 dir="$OUTBOX_REPO/examples/$1" dsn url producer consumer id
  url="postgresql://postgres@127.0.0.1:$PGPORT/outbox"
  dsn=$url
  [ "$lang" = java ] && dsn="jdbc:postgresql://127.0.0.1:$PGPORT/outbox?user=postgres"
  "$PY" - "$url" "$OUTBOX_REPO/schema/inbox/0001_inbox.sql" "$OUTBOX_REPO/examples/schema.sql" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    for path in sys.argv[2:]:
        c.execute(open(path).read())
PY
  local tool
  case $lang in node) tool=npm ;; go) tool=go ;; java) tool=mvn ;; *) tool="" ;; esac
  if [ -n "$tool" ] && ! PATH="$PATH:/usr/local/go/bin" command -v "$tool" >/dev/null; then
    die "examples/$lang needs $tool on PATH (examples/$lang/README.md says which version)"
  fi
  [ "$lang" = python ] || say "examples/$lang: build"
  (cd "$dir" && example_build "$lang") || die "examples/$lang did not build"
  producer=$(example_cmd "$lang" producer)
  consumer=$(example_cmd "$lang" consumer)
  say "examples/$lang producer: orders 1 paid, 2 paid, 1 shipped, then 1 paid again (a retry)"
  for call in "1 paid" "2 paid" "1 shipped" "1 paid"; do
    # shellcheck disable=SC2086 # the command's words
    id=$(cd "$dir" && OUTBOX_DSN=$dsn OUTBOX_TOPIC=orders $producer $call) || die "producer failed"
    echo "  order $call -> event $id"
  done
  say "examples/$lang consumer: each event applied once through the inbox"
  # shellcheck disable=SC2086
  (cd "$dir" && CONSUMER_DSN=$dsn KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP timeout 120 $consumer orders demo 3) ||
    { tail -n 20 "$T/relay.log" >&2; die "consumer failed"; }
  echo "first event applied by the $lang example $((SECONDS - START_S)) s after this script started"
}

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
# both starts end before either verdict: a server still starting when the other failed would
# outlive the cleanup, which stops only what has started
PG_OK=1 KAFKA_OK=1
wait $PG_JOB || PG_OK=0
wait $KAFKA_JOB || KAFKA_OK=0
[ $PG_OK -eq 1 ] || die "PostgreSQL did not start"
[ $KAFKA_OK -eq 1 ] || die "Kafka did not start"
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

if [ -z "$EXAMPLE" ]; then
  say "sample orders service: $EVENTS orders, each with its OrderPlaced event in the same transaction"
  "$PY" "$HERE/sample_service.py" --dsn "$OUTBOX_PG_DSN" --bootstrap "$KAFKA_BOOTSTRAP" --events "$EVENTS" ||
    { tail -n 20 "$T/relay.log" >&2; die "sample service reported a problem"; }
else
  run_example "$EXAMPLE"
fi

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
