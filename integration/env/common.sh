# Shared helpers for the integration scripts. Source it; do not run it.
# shellcheck shell=bash

OUTBOX_ENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUTBOX_REPO="$(cd "$OUTBOX_ENV_DIR/../.." && pwd)"
OUTBOX_CACHE="${OUTBOX_RELAY_CACHE:-$HOME/.cache/outbox-relay}"
OUTBOX_VENV="$OUTBOX_CACHE/venv"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The arguments of a server script (pg.sh, kafka.sh): start|stop|restart DIR.
usage() { echo "usage: $0 start|stop|restart DIR" >&2; exit 2; }
# Sets CMD and DIR (created, made absolute). Usage: server_args "$@"
server_args() {
  [ $# -eq 2 ] || usage
  CMD=$1
  DIR=$2
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
}

# Python used for small helpers (port picking). Debian's first: it is what
# install-deps.sh provides; any python3 will do.
outbox_python() {
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3; fi
}

# Print N distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
free_ports() {
  "$(outbox_python)" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# Kafka version from the pom, and the cached jar directory for it.
kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$OUTBOX_ENV_DIR/kafka-pom.xml" | head -n1
}
kafka_jar_dir() { echo "$OUTBOX_CACHE/kafka-$(kafka_version)"; }

# Alive = exists and is not a zombie (a zombie child of this shell still
# answers kill -0).
pid_alive() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [ "$state" != Z ]
}

# wait_pid_exit PID TIMEOUT_S: poll until the process is gone; 1 on timeout.
wait_pid_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while pid_alive "$pid"; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.1
  done
  return 0
}

# Merge KEY=VALUE lines into DIR/env (other keys are kept, so two servers
# may share one DIR). Usage: env_set DIR KEY=VALUE...
env_set() {
  local dir=$1
  shift
  # two servers may start in parallel on one DIR: serialise the read-modify-write
  (
    flock 9
    env_set_locked "$dir" "$@"
  ) 9>"$dir/.env.lock"
}

env_set_locked() {
  local dir=$1; shift
  local f="$dir/env" tmp kv key
  tmp="$(mktemp "$dir/.env.XXXXXX")"
  {
    if [ -f "$f" ]; then
      local keep
      keep=$(cat "$f")
      for kv in "$@"; do
        key=${kv%%=*}
        keep=$(printf '%s\n' "$keep" | grep -v "^export $key=" || true)
      done
      [ -n "$keep" ] && printf '%s\n' "$keep"
    fi
    for kv in "$@"; do
      key=${kv%%=*}
      local val=${kv#*=}
      printf "export %s='%s'\n" "$key" "${val//\'/\'\\\'\'}"
    done
  } >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$f"
}

# The Debian mirror this machine already uses (no host is hard-coded): librdkafka.sh's
# deb-src line, the image test's debootstrap (integration/deploy/rootfs.sh).
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ { print $2; exit }' "$f")
    if [ -n "$uri" ] && grep -q 'debian-archive-keyring' "$f" && ! grep -q 'security' <<<"$uri"; then
      echo "$uri"
      return
    fi
  done
  awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null
}
