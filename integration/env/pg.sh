#!/usr/bin/env bash
# Throwaway PostgreSQL server for tests and demos: Debian 12's 15, or the one in
# $OUTBOX_PG_BINDIR (e.g. PostgreSQL 16, 17 or 18 from env/pg-embedded.sh).
#
#   pg.sh start DIR     first start: initdb in DIR/pg on a free 127.0.0.1 port;
#                       later starts reuse the same port and data
#   pg.sh stop DIR      fast shutdown by pid, waits for the exit
#                       (PG_STOP_MODE=immediate for a crash-like stop)
#   pg.sh restart DIR
#
# After start, DIR/env (shell-sourceable) has PGHOST, PGPORT, PGUSER and
# OUTBOX_PG_DSN (database "outbox", created on first start). Trust auth,
# listens only on 127.0.0.1; fsync is off: data is disposable. OUTBOX_PG_CONF="k = v;k2 = v2"
# adds settings at the first start (initdb).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PGBIN="${PGBIN:-${OUTBOX_PG_BINDIR:-/usr/lib/postgresql/15/bin}}"
START_TIMEOUT="${PG_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PG_STOP_TIMEOUT:-60}"

server_args "$@"
PGD="$DIR/pg"        # owned by the server user: data, log, socket
DATA="$PGD/data"
LOGF="$PGD/postgres.log"

# As root, the server runs as user postgres (initdb and postgres refuse root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

server_pid() {
  [ -f "$DATA/postmaster.pid" ] && head -n1 "$DATA/postmaster.pid" || true
}

init_cluster() {
  mkdir -p "$PGD"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$PGD"
    chmod 755 "$DIR"
    as_pg test -w "$PGD" ||
      die "user postgres cannot write $PGD: a parent directory is not traversable (use a directory with mode 755 parents)"
    as_pg test -x "$PGBIN/postgres" ||
      die "user postgres cannot run $PGBIN/postgres (env/pg-embedded.sh prints a bindir it can)"
  fi
  as_pg "$PGBIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$PGD/initdb.log" 2>&1 ||
    { cat "$PGD/initdb.log" >&2; die "initdb failed"; }
  as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<EOF

# --- outbox-relay integration settings ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGD'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_connections = 200
max_prepared_transactions = 10
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
log_connections = off
EOF
  # OUTBOX_PG_CONF: more settings, "key = value" separated by ';' (the bench's --pg-set)
  if [ -n "${OUTBOX_PG_CONF:-}" ]; then
    printf '%s\n' "$OUTBOX_PG_CONF" | tr ';' '\n' | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
  fi
}

set_port() {
  # port in postgresql.auto.conf-like include so a restart reuses it
  echo "$1" >"$DIR/pg.port"
  as_pg sh -c "grep -v '^port = ' '$DATA/postgresql.conf' > '$DATA/postgresql.conf.new' && echo 'port = $1' >> '$DATA/postgresql.conf.new' && mv '$DATA/postgresql.conf.new' '$DATA/postgresql.conf'"
}

wait_ready() {
  local port=$1 deadline=$((SECONDS + START_TIMEOUT)) pid
  while :; do
    pid=$(server_pid)
    if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U postgres -t 2; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "postgres not ready on port $port after ${START_TIMEOUT}s"
      return 1
    fi
    sleep 0.1
  done
}

do_start() {
  local fresh=0 port pid
  if [ ! -f "$DATA/PG_VERSION" ]; then
    init_cluster
    fresh=1
  fi
  pid=$(server_pid)
  if pid_alive "$pid"; then
    log "already running (pid $pid)"
  else
    local tries=1
    [ $fresh -eq 1 ] && tries=3 # a freshly picked port may be taken meanwhile: pick again
    for ((i = 1; i <= tries; i++)); do
      if [ $fresh -eq 1 ]; then
        port=$(free_ports 1)
        set_port "$port"
      fi
      port=$(cat "$DIR/pg.port")
      if as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOGF" -w -t "$START_TIMEOUT" start >/dev/null 2>&1; then
        break
      fi
      if [ "$i" -eq "$tries" ]; then
        tail -n 20 "$LOGF" >&2 || true
        die "postgres did not start (log: $LOGF)"
      fi
      log "start on port $port failed, retrying with another port"
    done
  fi
  port=$(cat "$DIR/pg.port")
  wait_ready "$port" || { tail -n 20 "$LOGF" >&2; die "postgres not accepting connections"; }
  if [ $fresh -eq 1 ]; then
    "$PGBIN/psql" -q -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      -c 'CREATE DATABASE outbox' >/dev/null
  fi
  env_set "$DIR" PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres \
    OUTBOX_PG_DSN="host=127.0.0.1 port=$port dbname=outbox user=postgres"
  log "postgres up on 127.0.0.1:$port (pid $(server_pid), dir $PGD)"
}

do_stop() {
  local pid sig
  pid=$(server_pid)
  if ! pid_alive "$pid"; then
    log "not running"
    return 0
  fi
  case "${PG_STOP_MODE:-fast}" in
    fast) sig=INT ;;
    immediate) sig=QUIT ;;
    smart) sig=TERM ;;
    *) die "PG_STOP_MODE must be fast, immediate or smart" ;;
  esac
  kill -s "$sig" "$pid"
  if ! wait_pid_exit "$pid" "$STOP_TIMEOUT"; then
    log "postgres (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
    kill -s KILL "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" 10 || die "postgres pid $pid does not exit"
  fi
  log "postgres stopped (pid $pid)"
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop && do_start ;;
  *) usage ;;
esac
