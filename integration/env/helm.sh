#!/usr/bin/env bash
# Idempotent: builds Helm (pinned version) from source with `go install` and prints its path.
# The binary and Go's module and build caches live in the cache directory, so a second call
# returns at once and the chart test's own Go build reuses the same caches.
#
#   OUTBOX_RELAY_CACHE  cache directory (default ~/.cache/outbox-relay)
#   HELM_VERSION        Helm release tag to build (default below)
#
# Usage: helm.sh            builds if needed; prints the helm binary's path on stdout
#        . helm.sh --env    (sourced) only exports GOMODCACHE/GOCACHE/GOPATH of the cache
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELM_VERSION="${HELM_VERSION:-v3.19.5}"
export GOMODCACHE="$OUTBOX_CACHE/go/mod" GOCACHE="$OUTBOX_CACHE/go/build" GOPATH="$OUTBOX_CACHE/go/path"
export GOFLAGS="${GOFLAGS:--buildvcs=false}" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null && PATH="/usr/local/go/bin:$PATH"
BIN_DIR="$OUTBOX_CACHE/helm-$HELM_VERSION"
HELM="$BIN_DIR/helm"
# sourced with --env: stop here, leaving the caller's shell options alone
if [ "${1:-}" = "--env" ] && [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0
fi
set -euo pipefail

if [ -x "$HELM" ] && [ -f "$BIN_DIR/.complete" ]; then
  log "helm: $HELM_VERSION present in $BIN_DIR"
  echo "$HELM"
  exit 0
fi

command -v go >/dev/null || die "helm: no Go toolchain (go) on PATH; Helm $HELM_VERSION is built with go install"
log "helm: building $HELM_VERSION with $(go version | cut -d' ' -f3) (one time, a few minutes on 2 cores)"
# Helm's release builds (its Makefile) stamp, through -ldflags, the version and the Kubernetes
# version that `helm template` and `helm lint` assume (else 1.20): the minor of the k8s.io
# modules Helm is built with, read from its go.mod.
mod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
k8s_minor=$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$mod" | head -n1)
[ -n "$k8s_minor" ] || die "helm: no k8s.io/client-go version in $mod"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
rm -rf "$BIN_DIR.tmp"
mkdir -p "$BIN_DIR.tmp"
GOBIN="$BIN_DIR.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "$ldflags" >"$BIN_DIR.tmp/.complete"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
"$HELM" version --short >&2
echo "$HELM"
