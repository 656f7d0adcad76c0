#!/usr/bin/env bash
# Idempotent: makes sure the librdkafka the relay links is at least the version it needs.
#
# Debian 12 ships librdkafka 2.0.2, which cannot authenticate with SCRAM to a Kafka 4
# broker (its SCRAM client-final message repeats the nonce; fixed in 2.6.1). Debian 13's
# source package builds on Debian 12 with Debian 12's own build dependencies, so this
# script fetches that source (pinned version), builds the binary packages once, caches
# them and installs them. The container image (Dockerfile) does the same.
#
#   OUTBOX_RELAY_CACHE       where the built .deb files are kept (default ~/.cache/outbox-relay)
#   LIBRDKAFKA_SRC_VERSION   Debian source version to build (default below)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MIN_VERSION=2.6.1
SRC_VERSION="${LIBRDKAFKA_SRC_VERSION:-2.8.0-1}"
SRC_SUITE=trixie
DEBDIR="$OUTBOX_CACHE/librdkafka-$SRC_VERSION"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

have=$(dpkg-query -W -f='${Version}' librdkafka-dev 2>/dev/null || true)
if [ -n "$have" ] && dpkg --compare-versions "$have" ge "$MIN_VERSION" &&
  [ "$(dpkg-query -W -f='${Version}' librdkafka1 2>/dev/null)" = "$have" ]; then
  log "librdkafka: $have installed (need >= $MIN_VERSION)"
  exit 0
fi

if [ ! -f "$DEBDIR/.complete" ]; then
  log "librdkafka: building $SRC_VERSION from Debian $SRC_SUITE's source package (one time, about a minute)"
  mirror=$(debian_mirror)
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}; cannot fetch librdkafka's source"
  list=/etc/apt/sources.list.d/outbox-relay-$SRC_SUITE-src.sources
  if [ ! -f "$list" ]; then
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" "$SRC_SUITE" | $SUDO tee "$list" >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dpkg-dev fakeroot >/dev/null
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (
    cd "$work"
    apt-get source -qq "librdkafka=$SRC_VERSION" >/dev/null 2>&1 ||
      apt-get source "librdkafka=$SRC_VERSION" # again, loudly, to show why
    src=$(find . -maxdepth 1 -mindepth 1 -type d -name 'librdkafka-*' | head -n1)
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get build-dep -y -qq "$src" >/dev/null
    cd "$src"
    DEB_BUILD_OPTIONS="nocheck nodoc parallel=$(nproc)" dpkg-buildpackage -b -uc -us >build.log 2>&1 ||
      { tail -n 40 build.log >&2; exit 1; }
  )
  rm -rf "$DEBDIR.tmp"
  mkdir -p "$DEBDIR.tmp"
  cp "$work"/librdkafka1_*.deb "$work"/librdkafka++1_*.deb "$work"/librdkafka-dev_*.deb "$DEBDIR.tmp/"
  echo "$SRC_VERSION" >"$DEBDIR.tmp/.complete"
  rm -rf "$DEBDIR"
  mv "$DEBDIR.tmp" "$DEBDIR"
fi

log "librdkafka: installing $SRC_VERSION from $DEBDIR"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
  "$DEBDIR"/librdkafka1_*.deb "$DEBDIR"/librdkafka++1_*.deb "$DEBDIR"/librdkafka-dev_*.deb >/dev/null
log "librdkafka: $(dpkg-query -W -f='${Version}' librdkafka-dev) installed"
