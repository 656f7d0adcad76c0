#!/usr/bin/env bash
# CI check of charts/outbox-relay: helm lint --strict (default values and every option), then
# the Go test in manifests/: helm template with the default values, values-all.yaml and a
# chart-made Secret, every manifest decoded strictly into its k8s.io/api type, the security
# settings, the schema refusing misspelled values, the README listing every value.
# Helm and Go's caches live in ~/.cache/outbox-relay (integration/env/helm.sh).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../env/helm.sh
. "$HERE/../env/helm.sh" --env
HELM=$("$HERE/../env/helm.sh")
export HELM
CHART="$OUTBOX_REPO/charts/outbox-relay"

"$HELM" lint --strict "$CHART"
"$HELM" lint --strict -f "$HERE/values-all.yaml" "$CHART"
cd "$HERE/manifests"
# Same flags as the Helm build (helm.sh): the k8s.io packages Helm compiled are reused from GOCACHE.
CGO_ENABLED=0 go test -trimpath -count=1 ./...
