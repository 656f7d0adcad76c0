#!/usr/bin/env bash
# The container image's runtime stage without a container engine: a Debian 12 minbase root
# filesystem (what debian:12-slim is made of) built with debootstrap, the runtime packages
# the Dockerfile lists (read FROM the Dockerfile: ARG RUNTIME_PACKAGES) and the librdkafka1
# .deb installed into it, then the relay binary run inside it with chroot, as the image's
# numeric USER, on a read-only root with a tmpfs /tmp (as the Helm chart runs it).
#
#   rootfs.sh packages               the runtime packages the Dockerfile lists
#   rootfs.sh user                   the runtime stage's USER (uid:gid)
#   rootfs.sh base                   the Debian 12 minbase root filesystem (cached); prints its path
#   rootfs.sh build                  makes the root filesystem if needed (cached); prints its path
#   rootfs.sh ldd BINARY             ldd of BINARY inside it (as /usr/local/bin/outbox-relay)
#   rootfs.sh exec BINARY ARGS...    runs `outbox-relay ARGS` inside it as USER; a
#                                    `--config FILE` argument is mounted read-only at
#                                    /etc/outbox-relay/config.yaml. The relay keeps this
#                                    script's pid (exec all the way), so signals reach it.
#
# Needs root (debootstrap, chroot, mounts in a private mount namespace: nothing stays mounted).
# Cache: $OUTBOX_RELAY_CACHE/deploy/ (default ~/.cache/outbox-relay): the slim minbase root
# filesystem, and one runtime root filesystem per package list (rebuilt when the Dockerfile's
# list or the librdkafka .deb changes; older ones are removed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../env/common.sh
. "$HERE/../env/common.sh"

DOCKERFILE="${OUTBOX_DOCKERFILE:-$OUTBOX_REPO/Dockerfile}"
SUITE=bookworm
CACHE_DIR="$OUTBOX_CACHE/deploy"
BASE="$CACHE_DIR/$SUITE-slim"
RELAY_PATH=/usr/local/bin/outbox-relay
CONFIG_PATH=/etc/outbox-relay/config.yaml

# ARG RUNTIME_PACKAGES="\ ... " of the Dockerfile: one name per line up to the closing quote.
runtime_packages() {
  awk '
    /^ARG RUNTIME_PACKAGES="/ { on = 1; sub(/^ARG RUNTIME_PACKAGES="/, "") }
    on { line = $0; done = (line ~ /"/); sub(/".*/, "", line); gsub(/\\/, " ", line); printf "%s ", line; if (done) exit }
  ' "$DOCKERFILE" | xargs -n1 | sort -u | xargs
}

# The last USER of the Dockerfile (the runtime stage's), numeric uid:gid.
image_user() {
  local u
  u=$(awk '$1 == "USER" { u = $2 } END { print u }' "$DOCKERFILE")
  [[ "$u" =~ ^[0-9]+:[0-9]+$ ]] || die "Dockerfile: USER must be numeric uid:gid, found '${u:-nothing}'"
  echo "$u"
}

# The librdkafka1 .deb integration/env/librdkafka.sh built (what the image's build stage makes).
librdkafka_deb() {
  local d
  for d in "$OUTBOX_CACHE"/librdkafka-*/; do
    [ -f "$d.complete" ] || continue
    ls "$d"librdkafka1_*.deb 2>/dev/null | head -n1
    return
  done
  die "no librdkafka1 .deb in $OUTBOX_CACHE/librdkafka-*/: run integration/env/librdkafka.sh"
}

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root (debootstrap, chroot, mount namespaces)"; }

build_base() {
  [ -f "$BASE/.complete" ] && return
  need_root "building the root filesystem"
  command -v debootstrap >/dev/null || die "debootstrap missing (integration/env/install-deps.sh installs it)"
  local mirror t0=$SECONDS
  mirror=$(debian_mirror)
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list{,.d}"
  log "rootfs: debootstrap --variant=minbase $SUITE from $mirror (one time, about a minute)"
  rm -rf "$BASE.tmp"
  mkdir -p "$CACHE_DIR"
  debootstrap --variant=minbase "$SUITE" "$BASE.tmp" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1 ||
    { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"; }
  # The suites a debian:12 image has: bookworm, bookworm-updates, bookworm-security.
  local sec
  sec=$(awk '/^URIs:/ && /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  rm -f "$BASE.tmp/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" "$SUITE" "$SUITE"
    [ -n "$sec" ] && printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$sec" "$SUITE"
  } >"$BASE.tmp/etc/apt/sources.list.d/debian.sources"
  # Slim, as debian:12-slim: no documentation, manual pages or translations (now or when a
  # package is installed later), no package lists.
  cat >"$BASE.tmp/etc/dpkg/dpkg.cfg.d/outbox-relay-slim" <<'EOT'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOT
  find "$BASE.tmp/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "$BASE.tmp/usr/share/"{man,groff,info,lintian,locale}/* "$BASE.tmp/var/lib/apt/lists/"* \
    "$BASE.tmp/var/cache/apt/"*.bin "$BASE.tmp/var/cache/apt/archives/"*.deb
  date -u +%FT%TZ >"$BASE.tmp/.complete"
  rm -rf "$BASE" "$CACHE_DIR/$SUITE-minbase" # (the unslimmed one of earlier versions)
  mv "$BASE.tmp" "$BASE"
  log "rootfs: minbase ready in $((SECONDS - t0))s ($(du -sh "$BASE" | cut -f1))"
}

# Prints the runtime root filesystem's path, building it when the package list changed.
build_runtime() {
  local pkgs deb key rt t0=$SECONDS
  pkgs=$(runtime_packages)
  [ -n "$pkgs" ] || die "$DOCKERFILE: no ARG RUNTIME_PACKAGES list found"
  deb=$(librdkafka_deb)
  build_base
  key=$({ echo "$pkgs"; basename "$deb"; cat "$BASE/.complete"; } | sha256sum | cut -c1-12)
  rt="$CACHE_DIR/runtime-$key"
  if [ ! -f "$rt/.complete" ]; then
    need_root "building the root filesystem"
    log "rootfs: installing the Dockerfile's runtime packages: $pkgs + $(basename "$deb")"
    rm -rf "$rt.tmp"
    cp -a "$BASE" "$rt.tmp"
    rm -f "$rt.tmp/.complete"
    cp /etc/resolv.conf "$rt.tmp/etc/resolv.conf"
    cp "$deb" "$rt.tmp/tmp/librdkafka1.deb"
    # shellcheck disable=SC2086 # one word per package
    if ! chroot "$rt.tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs /tmp/librdkafka1.deb" \
      >"$CACHE_DIR/runtime.log" 2>&1; then
      tail -n 20 "$CACHE_DIR/runtime.log" >&2
      die "installing the runtime packages failed (log: $CACHE_DIR/runtime.log)"
    fi
    rm -rf "$rt.tmp/var/lib/apt/lists/"* "$rt.tmp/var/cache/apt/"*.bin "$rt.tmp/var/cache/apt/archives/"*.deb \
      "$rt.tmp/tmp/librdkafka1.deb"
    # mount points for the binary and the config (the image COPYs them there)
    mkdir -p "$rt.tmp/etc/outbox-relay"
    : >"$rt.tmp$RELAY_PATH"
    : >"$rt.tmp$CONFIG_PATH"
    echo "$pkgs $(basename "$deb")" >"$rt.tmp/.complete"
    find "$CACHE_DIR" -maxdepth 1 -name 'runtime-*' ! -name "runtime-$key*" -exec rm -rf {} +
    mv "$rt.tmp" "$rt"
    log "rootfs: runtime root filesystem ready in $((SECONDS - t0))s ($(du -sh "$rt" | cut -f1)): $rt"
  fi
  echo "$rt"
}

# enter USERSPEC BINARY CMD... : inside a private mount namespace, mounts the runtime root
# filesystem read-only with BINARY and the config, then chroot as USERSPEC and exec CMD.
enter() {
  need_root "running inside the root filesystem"
  local rt
  rt=$(build_runtime)
  exec unshare --mount --propagation private -- "$0" _inside "$rt" "$@"
}

inside() { # ROOTFS USERSPEC BINARY CMD...
  local rt=$1 userspec=$2 binary=$3
  shift 3
  local config="" args=() a
  while [ $# -gt 0 ]; do
    a=$1
    shift
    if [ "$a" = "--config" ] && [ $# -gt 0 ]; then
      config=$1
      shift
      args+=(--config "$CONFIG_PATH")
    else
      args+=("$a")
    fi
  done
  local mnt="$rt.mnt"
  mkdir -p "$mnt"
  mount --bind "$rt" "$mnt"
  mount --bind "$(readlink -f "$binary")" "$mnt$RELAY_PATH"
  [ -n "$config" ] && mount --bind "$(readlink -f "$config")" "$mnt$CONFIG_PATH"
  mount -t tmpfs -o size=64m,mode=1777 tmpfs "$mnt/tmp"
  mount -t proc proc "$mnt/proc"
  mount -o remount,bind,ro "$mnt" # readOnlyRootFilesystem: true
  exec chroot --userspec="$userspec" "$mnt" /usr/bin/env -u LD_LIBRARY_PATH -u LD_PRELOAD PATH=/usr/local/bin:/usr/bin:/bin HOME=/nonexistent \
    "${args[@]}"
}

case "${1:-}" in
  packages) runtime_packages ;;
  user) image_user ;;
  base)
    build_base
    echo "$BASE"
    ;;
  build) build_runtime ;;
  ldd)
    [ $# -eq 2 ] || die "usage: rootfs.sh ldd BINARY"
    enter 0:0 "$2" ldd "$RELAY_PATH"
    ;;
  exec)
    [ $# -ge 2 ] || die "usage: rootfs.sh exec BINARY ARGS..."
    user=$(image_user)
    binary=$2
    shift 2
    enter "$user" "$binary" outbox-relay "$@"
    ;;
  _inside)
    shift
    inside "$@"
    ;;
  *) die "usage: rootfs.sh packages|user|base|build|ldd BINARY|exec BINARY ARGS..." ;;
esac
