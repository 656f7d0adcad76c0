"""`migrate` and the two database roles: the relay's least-privilege login (outbox_relay)
runs the relay, a privileged role migrates (postgres.admin_dsn).

Before the fix, the relay's role failed `migrate` even on a database where nothing was left
to do (its bootstrap ran CREATE SCHEMA IF NOT EXISTS, which needs CREATE on the database)."""

from __future__ import annotations

import uuid

import pytest

from harness import Relay


@pytest.fixture
def relay_login(ctx):
    """A login role that is only a member of outbox_relay (cluster-wide: dropped at the end)."""
    name = f"lp_{uuid.uuid4().hex[:12]}"
    with ctx.pg.connect("postgres", autocommit=True) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE outbox_relay")
    yield name
    with ctx.pg.connect("postgres", autocommit=True) as c:
        c.execute(f"DROP OWNED BY {name}")  # in the postgres database only; it owns nothing
        c.execute(f"DROP ROLE IF EXISTS {name}")


def _dsn(ctx, db: str, user: str) -> str:
    return f"host=127.0.0.1 port={ctx.pg.port} dbname={db} user={user}"


def test_relay_role_finds_a_migrated_schema_up_to_date(ctx, relay_login, tmp_path):
    """Regression: the relay's role failed `migrate` even on a database where nothing was left
    to do (its bootstrap ran CREATE SCHEMA IF NOT EXISTS, which needs CREATE on the database)."""
    relay = Relay(ctx.config({"postgres": {"dsn": _dsn(ctx, ctx.db, relay_login)}}), tmp_path,
                  binary=ctx.relay_bin, name="least-privilege")
    r = relay.command("migrate")
    assert r.returncode == 0, f"migrate as the relay's role on a migrated database:\n{r.stdout}{r.stderr}"
    assert "schema up to date (0 applied now" in r.stdout, r.stdout
    assert "applied " not in r.stdout.replace("applied now", ""), r.stdout


def test_relay_role_on_a_bare_database_is_told_to_use_a_privileged_dsn(ctx, relay_login, tmp_path):
    db = ctx.db + "_bare"
    ctx.pg.create_database(db)
    try:
        relay = Relay(ctx.config({"postgres": {"dsn": _dsn(ctx, db, relay_login)}}), tmp_path,
                      binary=ctx.relay_bin, name="least-privilege-bare")
        r = relay.command("migrate")
        assert r.returncode == 1, f"{r.stdout}{r.stderr}"
        assert "permission denied" in r.stderr, r.stderr
        assert "privileged role" in r.stderr and "postgres.admin_dsn" in r.stderr, r.stderr
    finally:
        ctx.pg.drop_database(db)


def test_migrate_uses_admin_dsn_and_never_prints_its_password(ctx, relay_login, tmp_path):
    db = ctx.db + "_admin"
    ctx.pg.create_database(db)
    secret = "admin-" + uuid.uuid4().hex  # trust authentication: accepted and ignored
    try:
        cfg = ctx.config({"postgres": {"dsn": _dsn(ctx, db, relay_login),
                                       "admin_dsn": _dsn(ctx, db, "postgres") + f" password={secret}"}})
        relay = Relay(cfg, tmp_path, binary=ctx.relay_bin, name="admin-dsn")
        r = relay.command("migrate")
        assert r.returncode == 0, f"{r.stdout}{r.stderr}"
        assert "migrating with postgres.admin_dsn" in r.stdout, r.stdout
        assert "applied  0006_retention" in r.stdout, r.stdout
        assert secret not in r.stdout + r.stderr
        with ctx.pg.connect(db, autocommit=True) as c:
            owner = c.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'outbox' "
                              "AND tablename = 'events'").fetchone()[0]
            assert owner == "postgres"  # made by the admin role, not the relay's
            versions = [v for (v,) in c.execute("SELECT version FROM outbox.schema_migrations ORDER BY 1")]
            assert versions == [1, 2, 3, 4, 5, 6, 7, 8, 9]
            valid = c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                              "'outbox.events_published_at_idx'::regclass").fetchone()[0]
            assert valid
        # and the relay's own role, in the same file, now finds nothing to do
        again = relay.command("migrate")
        assert again.returncode == 0 and "0 applied now" in again.stdout, again.stdout + again.stderr
        bad = Relay(ctx.config({"postgres": {"dsn": _dsn(ctx, db, relay_login),
                                             "admin_dsn": "host='unterminated"}}),
                    tmp_path, binary=ctx.relay_bin, name="bad-admin-dsn")
        r = bad.command("migrate")
        assert r.returncode == 2 and "postgres.admin_dsn" in r.stderr, r.stdout + r.stderr
    finally:
        ctx.pg.drop_database(db)


def test_an_interrupted_concurrent_index_build_is_redone(ctx, tmp_path):
    """0005 runs outside a transaction (CREATE INDEX CONCURRENTLY): an invalid leftover of an
    interrupted build is dropped and the index built again, valid."""
    with ctx.connect() as c:
        c.execute("DROP INDEX outbox.events_published_at_idx")
        c.execute("DELETE FROM outbox.schema_migrations WHERE version = 5")
        # an invalid index of that name, as a CREATE INDEX CONCURRENTLY that failed leaves
        c.execute("INSERT INTO outbox.events (topic, key, payload) VALUES ('t', 'k', 'x'), ('t', 'k', 'x')")
    import psycopg

    with ctx.connect() as c:
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("CREATE UNIQUE INDEX CONCURRENTLY events_published_at_idx ON outbox.events (key)")
        assert c.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = "
                         "'outbox.events_published_at_idx'::regclass").fetchone()[0]
    r = ctx.migrate_relay.command("migrate")
    assert r.returncode == 0 and "applied  0005_retention_index" in r.stdout, r.stdout + r.stderr
    with ctx.connect() as c:
        row = c.execute("SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index WHERE indexrelid = "
                        "'outbox.events_published_at_idx'::regclass").fetchone()
        assert row[0], row
        assert "(published_at)" in row[1] and "UNIQUE" not in row[1], row
