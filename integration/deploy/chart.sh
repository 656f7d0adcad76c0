#!/usr/bin/env bash
# CI check of charts/outbox-relay: helm lint --strict (default values and every option), then
# the Go test in manifests/: helm template with the default values, values-all.yaml and a
# chart-made Secret, every manifest decoded strictly into its k8s.io/api type, the security
# settings, the schema refusing misspelled values, the README listing every value; the alerts
# (alerts/outbox-relay.rules.yaml kept equal to the chart's PrometheusRule, `promtool check
# rules` and `promtool test rules` on it), the Grafana dashboard, every metric they name
# registered in relay/'s sources; one version in CMakeLists.txt, the chart, the CHANGELOG.
# Helm and Go's caches live in ~/.cache/outbox-relay (integration/env/helm.sh); promtool is
# Debian's prometheus package (integration/env/install-deps.sh).
#
#   OUTBOX_UPDATE_ALERTS=1 integration/deploy/chart.sh   writes alerts/outbox-relay.rules.yaml
#                                                        from the chart's template first
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../env/helm.sh
. "$HERE/../env/helm.sh" --env
HELM=$("$HERE/../env/helm.sh")
export HELM
CHART="$OUTBOX_REPO/charts/outbox-relay"
command -v "${PROMTOOL:-promtool}" >/dev/null ||
  die "chart: no promtool (the alert checks need it): apt-get install prometheus (integration/env/install-deps.sh installs it)"

"$HELM" lint --strict "$CHART"
"$HELM" lint --strict -f "$HERE/values-all.yaml" "$CHART"
cd "$HERE/manifests"
# Same flags as the Helm build (helm.sh): the k8s.io packages Helm compiled are reused from GOCACHE.
CGO_ENABLED=0 go test -trimpath -count=1 ./...
