#!/usr/bin/env bash
# Builds the Dockerfile into an image with buildah (daemonless, from Debian's packages),
# without a registry: the base images debian:12 and debian:12-slim are made from the Debian 12
# minbase root filesystem that integration/deploy/rootfs.sh builds with debootstrap (what the
# official images are made of), and the build never pulls.
#
#   integration/deploy/build-image.sh [TAG]     (default outbox-relay:VERSION, VERSION from
#                                               version.sh, the chart's appVersion; needs root)
#
# Then run it, e.g.: podman run --rm --network host -v $PWD/relay.yaml:/etc/outbox-relay/config.yaml:ro \
#   --read-only outbox-relay:0.1.0 check --config /etc/outbox-relay/config.yaml
# The build compiles librdkafka and the relay: about 10 minutes on 2 cores the first time.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../env/common.sh
. "$HERE/../env/common.sh"
VERSION=$("$HERE/version.sh")
TAG="${1:-outbox-relay:$VERSION}"

command -v buildah >/dev/null || die "buildah missing: apt-get install buildah"
base=$("$HERE/rootfs.sh" base)
stamp=$(cat "$base/.complete")
for ref in docker.io/library/debian:12 docker.io/library/debian:12-slim; do
  if [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "org.outbox-relay.rootfs"}}' "$ref" 2>/dev/null)" = "$stamp" ]; then
    log "image: $ref present (debootstrap $stamp)"
    continue
  fi
  log "image: importing $base as $ref"
  ctr=$(buildah from --pull-never scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$base" --exclude=./.complete -cf - . | tar -C "$mnt" -xf -
  buildah umount "$ctr" >/dev/null
  buildah config --cmd /bin/bash --annotation "org.outbox-relay.rootfs=$stamp" "$ctr"
  buildah commit -q --rm "$ctr" "$ref" >/dev/null
done

log "image: buildah bud -t $TAG $OUTBOX_REPO"
t0=$SECONDS
# --isolation chroot: RUN steps without an OCI runtime; crun refuses this machine's cgroup layout
# ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2").
buildah bud --isolation chroot --pull-never --network host --layers --build-arg VERSION="$VERSION" -t "$TAG" -f "$OUTBOX_REPO/Dockerfile" "$OUTBOX_REPO"
log "image: $TAG built in $((SECONDS - t0))s"
buildah images "$TAG"
