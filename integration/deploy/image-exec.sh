#!/usr/bin/env bash
# Runs `outbox-relay ARGS` from a built image (integration/deploy/build-image.sh) without a
# container engine daemon: buildah run with chroot isolation (podman/crun cannot start a
# container on this machine: "setrlimit RLIMIT_NOFILE: Operation not permitted", the sandbox
# withholds CAP_SYS_RESOURCE). Host network; the image's USER; a `--config FILE` argument is
# mounted read-only at /etc/outbox-relay/config.yaml; OUTBOX_* and PG* variables are passed.
# SIGTERM/SIGINT are forwarded to the relay; the working container is removed at exit.
#
#   integration/deploy/image-exec.sh check --config relay.yaml   (OUTBOX_IMAGE: default
#   localhost/outbox-relay:VERSION, what build-image.sh tags)
set -euo pipefail
IMAGE="${OUTBOX_IMAGE:-localhost/outbox-relay:$("$(dirname "${BASH_SOURCE[0]}")/version.sh")}"
args=() opts=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--config" ] && [ $# -ge 2 ]; then
    opts+=(-v "$(readlink -f "$2"):/etc/outbox-relay/config.yaml:ro")
    args+=(--config /etc/outbox-relay/config.yaml)
    shift 2
  else
    args+=("$1")
    shift
  fi
done
while IFS='=' read -r name _; do
  case "$name" in OUTBOX_IMAGE) ;; OUTBOX_* | PG*) opts+=(-e "$name=${!name}") ;; esac
done < <(env)
ctr=$(buildah from --pull-never "$IMAGE")
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
buildah run --isolation chroot --network host "${opts[@]}" "$ctr" -- outbox-relay "${args[@]}" &
child=$!
# buildah answers SIGTERM by killing its child; the relay must get the signal itself (SIGTERM
# finishes and marks the deliveries in flight): buildah -> chroot runtime -> exec -> relay.
relay_pid() {
  local p=$child c
  for _ in 1 2 3 4; do
    c=$(pgrep -P "$p" | head -n1) || break
    p=$c
  done
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = outbox-relay ] && echo "$p"
}
forward() {
  local pid
  pid=$(relay_pid) || true
  if [ -n "$pid" ]; then kill -"$1" "$pid" 2>/dev/null || true; else kill -"$1" "$child" 2>/dev/null || true; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break # a trapped signal interrupted wait: keep waiting
done
exit "$rc"
