"""`migrate` and the two database roles: the relay's least-privilege login (outbox_relay)
runs the relay, a privileged role migrates (postgres.admin_dsn).

Before the fix, the relay's role failed `migrate` even on a database where nothing was left
to do (its bootstrap ran CREATE SCHEMA IF NOT EXISTS, which needs CREATE on the database)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from harness import Relay

# the versions of the files in schema/: migrate applies every one
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
SCHEMA_VERSIONS = sorted(int(p.name[:4]) for p in SCHEMA_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))


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
            assert versions == SCHEMA_VERSIONS  # every file of schema/, none left out
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


# --------------------------------------------------------------- roles of each database's own
def _try(dsn: str, statement: str, params=()) -> str:
    """'ok', or 'refused' when the statement fails for lack of privilege."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            c.execute(statement, params)
            return "ok"
        except psycopg.errors.InsufficientPrivilege:
            return "refused"


def _drop_roles(ctx, names) -> None:
    from psycopg import sql

    with ctx.pg.connect("postgres", autocommit=True) as c:
        for name in names:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


ENQUEUE = "SELECT outbox.enqueue('t'::text, 'k'::text, '\\x00'::bytea, '{}'::jsonb)"
MARK = "UPDATE outbox.events SET published_at = now() WHERE published_at IS NULL"


def test_databases_with_roles_of_their_own_keep_their_outboxes_apart(ctx, tmp_path):
    """Regression: the relay and writer roles were fixed and cluster-wide, so the relay login
    of one database could read and mark another database's outbox and any writer could
    enqueue into it. With postgres.relay_role and postgres.writer_role per database, `migrate`
    makes and grants each database's own roles, and each login reaches only its database."""
    tag = uuid.uuid4().hex[:8]
    svc = {}
    made_roles = []
    try:
        for name in ("a", "b"):
            db = f"{ctx.db}_{name}"
            ctx.pg.create_database(db)
            roles = {"relay_role": f"{name}_relay_{tag}", "writer_role": f"{name}_writer_{tag}"}
            made_roles += roles.values()
            relay = Relay(ctx.config({"postgres": {"dsn": _dsn(ctx, db, "postgres"), **roles}}), tmp_path,
                          binary=ctx.relay_bin, name=f"migrate-{name}")
            r = relay.command("migrate")
            assert r.returncode == 0, f"{r.stdout}{r.stderr}"
            for role in roles.values():
                assert f"role     {role}: created" in r.stdout and f"role     {role}: granted" in r.stdout, r.stdout
            relay_login, writer_login = f"{name}_rl_{tag}", f"{name}_wl_{tag}"
            made_roles[:0] = [relay_login, writer_login]  # dropped before the groups
            with ctx.pg.connect("postgres", autocommit=True) as c:
                c.execute(f"CREATE ROLE {relay_login} LOGIN IN ROLE {roles['relay_role']}")
                c.execute(f"CREATE ROLE {writer_login} LOGIN IN ROLE {roles['writer_role']}")
            svc[name] = {"db": db, "relay": relay_login, "writer": writer_login}

        for me, other in (("a", "b"), ("b", "a")):
            own, theirs = svc[me]["db"], svc[other]["db"]
            relay, writer = svc[me]["relay"], svc[me]["writer"]
            # In its own database each does its work...
            assert _try(_dsn(ctx, own, writer), ENQUEUE) == "ok"
            assert _try(_dsn(ctx, own, relay), "SELECT count(*) FROM outbox.events") == "ok"
            assert _try(_dsn(ctx, own, relay), MARK) == "ok"
            # ...and nothing in the other's.
            assert _try(_dsn(ctx, theirs, relay), "SELECT count(*) FROM outbox.events") == "refused"
            assert _try(_dsn(ctx, theirs, relay), MARK) == "refused"
            assert _try(_dsn(ctx, theirs, writer), ENQUEUE) == "refused"
        # The shared default roles got nothing in these databases either.
        with ctx.pg.connect(svc["a"]["db"], autocommit=True) as c:
            assert not c.execute("SELECT has_table_privilege('outbox_relay', 'outbox.events', 'SELECT')").fetchone()[0]
    finally:
        for s in svc.values():
            ctx.pg.drop_database(s["db"])
        _drop_roles(ctx, made_roles)


def test_migrate_without_createrole_when_the_roles_exist(ctx, tmp_path):
    """Regression: schema 0002 ran CREATE ROLE, which checks CREATEROLE before it looks whether
    the role exists: a database's owner without CREATEROLE could not migrate, although the
    roles existed. Now an existing role is used as it is (and granted); only a missing one
    needs CREATEROLE, and is named with what to do."""
    tag = uuid.uuid4().hex[:8]
    owner, db = f"owner_{tag}", f"{ctx.db}_own"
    with ctx.pg.connect("postgres", autocommit=True) as c:
        c.execute(f"CREATE ROLE {owner} LOGIN NOCREATEROLE NOSUPERUSER")
        c.execute(f'CREATE DATABASE "{db}" OWNER {owner} TEMPLATE template0')
    try:
        # The default roles exist (the cluster's other databases were migrated with them).
        cfg = ctx.config({"postgres": {"dsn": _dsn(ctx, db, "nobody"), "admin_dsn": _dsn(ctx, db, owner)}})
        r = Relay(cfg, tmp_path, binary=ctx.relay_bin, name="no-createrole").command("migrate")
        assert r.returncode == 0, f"migrate by the database's owner, without CREATEROLE:\n{r.stdout}{r.stderr}"
        assert "role     outbox_relay: present" in r.stdout and "applied  0002_roles" in r.stdout, r.stdout
        with ctx.pg.connect(db, autocommit=True) as c:
            held = c.execute("SELECT has_table_privilege('outbox_relay', 'outbox.events', 'SELECT'), "
                             "has_function_privilege('outbox_writer', "
                             "'outbox.enqueue(text, text, bytea, jsonb, text)', 'EXECUTE')").fetchone()
            assert held == (True, True), held
            # A database that applied 0002 when it made the roles itself: not reported as edited.
            c.execute("UPDATE outbox.schema_migrations SET checksum = 'ba577f4eab1448f5' WHERE version = 2")
        r = Relay(cfg, tmp_path, binary=ctx.relay_bin, name="no-createrole-again").command("migrate")
        assert r.returncode == 0 and "0 applied now" in r.stdout, r.stdout + r.stderr
        assert "differs" not in r.stderr, r.stderr

        # A role that does not exist needs CREATEROLE: refused, naming it and what to do.
        missing = f"missing_relay_{tag}"
        cfg["postgres"]["relay_role"] = missing
        r = Relay(cfg, tmp_path, binary=ctx.relay_bin, name="no-createrole-missing").command("migrate")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"role {missing} does not exist" in r.stderr and "CREATEROLE" in r.stderr, r.stderr
        assert f"CREATE ROLE {missing} NOLOGIN" in r.stderr, r.stderr
    finally:
        ctx.pg.drop_database(db)
        _drop_roles(ctx, [owner])
