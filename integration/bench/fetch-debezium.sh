#!/usr/bin/env bash
# Fetches Kafka Connect (standalone worker) and Debezium's PostgreSQL connector from Maven
# Central into $OUTBOX_RELAY_CACHE/bench-debezium-<version>/ (default cache: ~/.cache/outbox-relay).
# Idempotent: nothing happens when the jars of this pom are already there. Prints the jar
# directory on stdout. Run by integration/env/install-deps.sh (for tests/test_cutover.py), and
# again by bench.py and integration/harness/debezium.py on use (a no-op once fetched).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../env/common.sh
. "$HERE/../env/common.sh"

POM="$HERE/debezium-pom.xml"
version=$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$POM" | head -n1)
connect=$(sed -n 's:.*<connect.version>\(.*\)</connect.version>.*:\1:p' "$POM" | head -n1)
[ "$connect" = "$(kafka_version)" ] ||
  die "connect.version $connect in $POM differs from the broker's $(kafka_version) (integration/env/kafka-pom.xml)"
DEST="$OUTBOX_CACHE/bench-debezium-$version-connect-$connect"
sum="$(sha256sum "$POM" | cut -d' ' -f1)"

if [ -f "$DEST/.complete" ] && [ "$(cat "$DEST/.complete")" = "$sum" ]; then
  echo "$DEST"
  exit 0
fi
command -v mvn >/dev/null || die "mvn missing: run integration/env/install-deps.sh"
log "fetching Debezium $version and Kafka Connect $connect into $DEST"
staging="$DEST.partial.$$"
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"
# Debian's Maven colours its output even in batch mode: strip the escapes.
if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
  -DoutputDirectory="$staging" -DincludeScope=runtime 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2; then
  die "mvn could not fetch the Debezium jars"
fi
ls "$staging"/debezium-connector-postgres-*.jar "$staging"/connect-runtime-*.jar >/dev/null ||
  die "jars missing after mvn"
echo "$sum" >"$staging/.complete"
rm -rf "$DEST"
mv "$staging" "$DEST"
log "$(find "$DEST" -name '*.jar' | wc -l) jars in $DEST"
echo "$DEST"
