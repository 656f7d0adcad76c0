"""Least privilege (schema/0002_roles.sql): a login role in outbox_relay can read and mark the
outbox (the relay runs with it, in both source modes) and nothing else; a login role in
outbox_writer can call enqueue and nothing else; replication mode needs only the REPLICATION
attribute and a publication made by the table's owner.

Costs about 15 s in CI (shared servers).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from harness import enqueue, wait_until


@pytest.fixture
def roles(ctx):
    """login role name -> group; dropped at the end (they belong to the whole cluster)."""
    made = []

    def make(group: str, replication: bool = False) -> str:
        name = f"{group[7]}{len(made)}_{ctx.name}"[:63]
        with ctx.pg.connect("postgres", autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            c.execute(sql.SQL("CREATE ROLE {} LOGIN {} IN ROLE {}").format(
                sql.Identifier(name), sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
                sql.Identifier(group)))  # fmt: skip
        made.append(name)
        return name

    yield make
    with ctx.pg.connect("postgres", autocommit=True) as c:
        for name in made:
            try:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.Error:
                pass  # still connected or owning something: the cluster is thrown away


def _as(ctx, role: str):
    return psycopg.connect(ctx.dsn.replace("user=postgres", f"user={role}"), autocommit=True)


def _refused(conn, statement: str, params=()) -> str:
    """The statement must fail for lack of privilege; returns the error."""
    try:
        conn.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege as e:
        return str(e)
    raise AssertionError(f"allowed: {statement}")


def test_relay_role_reads_and_marks_the_outbox_and_nothing_else(ctx, roles):
    relay_role = roles("outbox_relay")
    topic = ctx.topic("priv", partitions=1)
    with ctx.connect() as c:
        c.execute("CREATE TABLE public.orders (id int PRIMARY KEY, total int)")
        c.execute("INSERT INTO public.orders VALUES (1, 10)")
        for i in range(5):
            enqueue(c, topic, "k", f"e{i}".encode())

    # What it may do, done by the relay itself: read, publish, mark.
    relay = ctx.relay({"postgres": {"dsn": ctx.dsn.replace("user=postgres", f"user={relay_role}")},
                       "log": {"level": "trace"}})
    r = relay.check()
    assert r.returncode == 0 and f"role {relay_role} can read and mark outbox.events" in r.stdout, r.stdout + r.stderr
    relay.start()
    ctx.wait_all_published(5, 60, relay)
    assert relay.terminate() == 0
    # The read floor's fence (pg_sequence, pg_locks) needs no privilege beyond these.
    assert "read floor 0: passed up to id 5" in relay.log_text(), relay.log_tail()
    assert "the read floor is off" not in relay.log_text(), relay.log_tail()

    with _as(ctx, relay_role) as c:
        for stmt in [
            "INSERT INTO public.orders VALUES (2, 20)",
            "UPDATE public.orders SET total = 0",
            "DELETE FROM public.orders",
            "SELECT * FROM public.orders",
            "SELECT outbox.enqueue('t'::text, 'k'::text, '\\x00'::bytea, '{}'::jsonb)",
            "SELECT outbox.enqueue('t'::text, 'k'::text, '{}'::jsonb, '{}'::jsonb)",
            "INSERT INTO outbox.events (topic, payload) VALUES ('t', '\\x00')",
            "DELETE FROM outbox.events",
            "TRUNCATE outbox.events",
            "UPDATE outbox.events SET payload = '\\x01'",
            "UPDATE outbox.events SET topic = 'elsewhere'",
            "ALTER TABLE outbox.events ADD COLUMN x int",
            "DROP TABLE outbox.events",
            "CREATE TABLE outbox.mine (x int)",
            "CREATE TABLE public.mine (x int)",
            "CREATE SCHEMA mine",
            "CREATE PUBLICATION mine FOR TABLE outbox.events",
        ]:
            _refused(c, stmt)
        # It could mark (its columns only) - the relay just did; and read:
        assert c.execute("SELECT count(*) FROM outbox.events WHERE published_at IS NOT NULL").fetchone()[0] == 5


def test_writer_role_can_only_enqueue(ctx, roles):
    writer = roles("outbox_writer")
    with _as(ctx, writer) as c:
        enqueue(c, "t", "k", b"from a service")
        c.execute("SELECT outbox.enqueue('t'::text, 'k'::text, '{\"a\":1}'::jsonb, '{}'::jsonb)")
        c.execute("SELECT outbox.enqueue('t'::text, 'k'::text, '\\x00'::bytea, '{}'::jsonb, 'op-1'::text)")
        c.execute("SELECT outbox.enqueue('t'::text, 'k'::text, '{}'::jsonb, '{}'::jsonb, 'op-1'::text)")
        for stmt in [
            "SELECT * FROM outbox.events",
            "SELECT count(*) FROM outbox.events",
            "UPDATE outbox.events SET published_at = now()",
            "UPDATE outbox.events SET dead_lettered_at = now()",
            "INSERT INTO outbox.events (topic, payload) VALUES ('t', '\\x00')",
            "DELETE FROM outbox.events",
            "SELECT * FROM outbox.replay(ARRAY[1]::bigint[])",
            "UPDATE outbox.relay_wakeup SET armed = armed",
            "CREATE TABLE outbox.mine (x int)",
        ]:
            _refused(c, stmt)
    assert ctx.counts() == (3, 0)


def test_replication_mode_needs_replication_and_a_publication_only(ctx, roles):
    """docs/guide/replication-mode.md: the REPLICATION attribute, and the publication created once by the table's
    owner when the relay's role does not own outbox.events. The slot the relay makes itself."""
    topic = ctx.topic("priv", partitions=1)
    with ctx.connect() as c:
        for i in range(3):
            enqueue(c, topic, "k", f"e{i}".encode())
    slot = f"p_{ctx.name}"[:63]
    replication = {"source": {"mode": "replication", "replication": {"slot_name": slot}}}

    # Without REPLICATION: refused, and `check` says what is missing.
    plain = roles("outbox_relay")
    cfg = {"postgres": {"dsn": ctx.dsn.replace("user=postgres", f"user={plain}")}, **replication}
    r = ctx.relay(cfg, name="norepl").check()
    assert r.returncode == 1 and "REPLICATION" in r.stdout, r.stdout + r.stderr

    # REPLICATION, no publication, not the owner: it cannot create the publication.
    repl = roles("outbox_relay", replication=True)
    cfg = {"postgres": {"dsn": ctx.dsn.replace("user=postgres", f"user={repl}")}, **replication}
    # (`check` says "the relay creates it at start" here, which it cannot.)
    nopub = ctx.relay(cfg, name="nopub").start()
    assert nopub.wait(60) == 1, nopub.log_tail()
    assert "cannot create publication outbox_relay" in nopub.log_text(), nopub.log_tail()
    assert "CREATE PUBLICATION outbox_relay FOR TABLE outbox.events WITH (publish = 'insert')" in nopub.log_text()

    # The owner makes the publication once: now it runs, creating its slot itself.
    with ctx.connect() as c:
        c.execute("CREATE PUBLICATION outbox_relay FOR TABLE outbox.events WITH (publish = 'insert')")
    relay = ctx.relay(cfg, name="repl")
    r = relay.check()
    assert r.returncode == 0, r.stdout + r.stderr
    relay.start()
    ctx.wait_all_published(3, 60, relay)
    wait_until(lambda: ctx.slot(slot) is not None, 10, 0.1, "the relay's slot")
    assert relay.terminate() == 0
