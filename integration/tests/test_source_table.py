"""A service's own outbox table in Debezium's shape (source.tables): `migrate` installs a
trigger copying each inserted row into outbox.events in the writer's transaction, and the
relay publishes the copies as Debezium's EventRouter would (docs/guide/coming-from-debezium.md,
"Keeping your outbox table"). Plain INSERTs and the insert+delete idiom, both source modes; a
poison row dead-lettered with its reason while the rest flow; a rolled-back insert; migrate
run twice; check and status. A few seconds each.
"""

from __future__ import annotations

import json
import uuid

import pytest

from harness.relay import Relay

DEBEZIUM_TABLE = """
CREATE TABLE public.outboxevent (
    id            uuid         NOT NULL PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid   varchar(255) NOT NULL,
    type          varchar(255) NOT NULL,
    payload       jsonb
)"""

# Debezium's output (the guide's options) and the table with its type column as a header.
DEBEZIUM_MESSAGE = {"topic_template": "outbox.event.{topic}", "id_header": True,
                    "json_string_key": True, "json_string_value": True}
SOURCE = {"tables": [{"table": "public.outboxevent", "headers": {"type": "eventType"}}]}


def _migrate(ctx, source: dict, expect_ok: bool = True):
    r = Relay(ctx.config({"source": source}), ctx.workdir, binary=ctx.relay_bin, name="migrate-src")
    out = r.command("migrate", timeout_s=120)
    if expect_ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _insert(c, row_topic: str, key: str, type_: str, payload: dict, delete: bool = False) -> str:
    event_id = str(uuid.uuid4())
    c.execute("INSERT INTO public.outboxevent (id, aggregatetype, aggregateid, type, payload) "
              "VALUES (%s, %s, %s, %s, %s::jsonb)", (event_id, row_topic, key, type_, json.dumps(payload)))
    if delete:  # what services written for Debezium do: the WAL has the row, the table not
        c.execute("DELETE FROM public.outboxevent WHERE id = %s", (event_id,))
    return event_id


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_debezium_table_inserts_and_insert_delete_published_as_debezium(ctx):
    """Rows of a Debezium-shaped table, inserted plainly and inserted and deleted in one
    transaction, reach outbox.event.<aggregatetype> with Debezium's key, value bytes, id
    header and the type column as header eventType; the service's role has no grant of
    schema outbox (the copy is SECURITY DEFINER)."""
    row_topic = ctx.topic("order", create=False)
    kafka_topic = ctx.kafka.create_topic("outbox.event." + row_topic, 3)
    with ctx.connect() as c:
        c.execute(DEBEZIUM_TABLE)
        c.execute(f"DROP ROLE IF EXISTS svc_{ctx.name}")
        c.execute(f"CREATE ROLE svc_{ctx.name} NOLOGIN")
        c.execute(f"GRANT INSERT, DELETE, SELECT ON public.outboxevent TO svc_{ctx.name}")
    _migrate(ctx, SOURCE)
    relay = ctx.relay({"message": DEBEZIUM_MESSAGE, "source": SOURCE}).start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    want = {}
    with ctx.connect(autocommit=False) as c:
        c.execute(f"SET ROLE svc_{ctx.name}")
        for i in range(5):
            key = f"order-{i}"
            want[key] = (_insert(c, row_topic, key, "OrderCreated", {"id": i, "k": key}), "OrderCreated")
            c.commit()
        for i in range(5, 10):  # insert and delete in one transaction
            key = f"order-{i}"
            want[key] = (_insert(c, row_topic, key, "OrderShipped", {"id": i, "k": key}, delete=True),
                         "OrderShipped")
        c.commit()
        c.execute("RESET ROLE")
        c.commit()
    with ctx.connect() as c:
        assert c.execute("SELECT count(*) FROM public.outboxevent").fetchone()[0] == 5
        assert c.execute("SELECT count(*) FROM outbox.events WHERE source_table = 'public.outboxevent'"
                         ).fetchone()[0] == 10
    ctx.wait_all_published(10, 60, relay)
    got = ctx.kafka.consume_all(kafka_topic, 10, 60)
    assert len(got) == 10
    for r in got:
        key = json.loads(r.key)  # "order-7", with the quotes
        event_id, type_ = want[key]
        assert r.key == json.dumps(key)
        assert r.headers["id"] == r.headers["outbox-event-id"] == event_id
        assert r.headers["eventType"] == type_
        # The value: a JSON string whose text is the jsonb payload, as Debezium sends it.
        assert json.loads(json.loads(r.value)) == {"id": int(key.split("-")[1]), "k": key}
    assert sorted(json.loads(r.key) for r in got) == sorted(want)


def test_a_poison_source_row_is_dead_lettered_with_its_reason_while_the_rest_flow(ctx):
    """Invariant source-copy-never-fails: a source row the copy cannot map (an id that is not
    a uuid, a NULL or empty topic) never fails the service's insert and is not lost: it is
    copied dead-lettered with its reason; the rows around it are published."""
    topic = ctx.topic("legacy")
    with ctx.connect() as c:
        c.execute("CREATE TABLE public.legacy_outbox (id text, aggregatetype text, aggregateid text, "
                  "type text, payload text)")
    _migrate(ctx, {"tables": [{"table": "public.legacy_outbox"}]})
    relay = ctx.relay().start()
    good = [str(uuid.uuid4()) for _ in range(3)]
    with ctx.connect() as c:  # autocommit: each insert its own transaction, none may fail
        ins = ("INSERT INTO public.legacy_outbox (id, aggregatetype, aggregateid, type, payload) "
               "VALUES (%s, %s, %s, 'T', %s)")
        c.execute(ins, (good[0], topic, "k", "one"))
        c.execute(ins, ("order-17", topic, "k", "not a uuid"))
        c.execute(ins, (good[1], None, "k", "no topic"))
        c.execute(ins, (str(uuid.uuid4()), "", "k", "empty topic"))
        c.execute(ins, (None, topic, "k", "null id"))
        c.execute(ins, (good[2].upper(), topic, "k", "upper-case uuid"))
        rows = c.execute("SELECT convert_from(payload, 'UTF8'), dead_lettered_at IS NOT NULL, last_error "
                         "FROM outbox.events ORDER BY id").fetchall()
    assert len(rows) == 6
    reasons = {p: (dead, err) for p, dead, err in rows}
    assert reasons["one"] == (False, None)
    assert reasons["upper-case uuid"] == (False, None)
    assert reasons["not a uuid"] == (True, "source row of public.legacy_outbox not publishable: "
                                           "its event id (column id) is not a uuid: order-17")
    assert reasons["no topic"] == (True, "source row of public.legacy_outbox not publishable: "
                                         "its topic (column aggregatetype) is NULL or empty")
    assert reasons["empty topic"][0] and "NULL or empty" in reasons["empty topic"][1]
    assert reasons["null id"] == (True, "source row of public.legacy_outbox not publishable: "
                                        "its event id (column id) is NULL")
    ctx.wait_marked_at_least(2, 60, relay)
    got = ctx.kafka.consume_all(topic, 2, 60)
    assert sorted(r.value for r in got) == sorted([b"one", b"upper-case uuid"])
    assert {r.event_id for r in got} == {good[0], good[2]}


def test_a_rolled_back_insert_copies_nothing(ctx):
    """The copy is part of the writer's transaction: a rollback leaves no event."""
    with ctx.connect() as c:
        c.execute(DEBEZIUM_TABLE)
    _migrate(ctx, SOURCE)
    with ctx.connect(autocommit=False) as c:
        _insert(c, "orders", "k", "T", {"a": 1})
        _insert(c, "orders", "k", "T", {"a": 2}, delete=True)
        c.rollback()
        kept = _insert(c, "orders", "k", "T", {"a": 3})
        c.commit()
    with ctx.connect() as c:
        rows = c.execute("SELECT event_id::text FROM outbox.events").fetchall()
    assert rows == [(kept,)]


def test_migrate_twice_changes_nothing_and_check_and_status_list_the_table(ctx):
    """A second migrate with the same config finds the trigger installed as configured and
    changes nothing (same function, trigger, installed_lsn); check and status list the table;
    a changed mapping is reported by check until migrate runs, which replaces the function
    and keeps installed_lsn; a mapping naming a missing column is refused with the table,
    the column and what to do."""
    with ctx.connect() as c:
        c.execute(DEBEZIUM_TABLE)
    first = _migrate(ctx, SOURCE)
    assert "source   public.outboxevent: installed" in first.stdout

    def installed():
        with ctx.connect() as c:
            return c.execute(
                "SELECT s.installed_lsn::text, s.installed_at, g.oid, p.oid, p.prosrc "
                "FROM outbox.source_tables s, pg_trigger g, pg_proc p "
                "WHERE s.source_table = 'public.outboxevent' AND g.tgrelid = 'public.outboxevent'::regclass "
                "AND g.tgname = 'outbox_copy' AND p.oid = g.tgfoid").fetchall()

    before = installed()
    assert len(before) == 1
    second = _migrate(ctx, SOURCE)
    assert "source   public.outboxevent: up to date" in second.stdout
    assert installed() == before

    cli = ctx.relay({"source": SOURCE}, name="cli")
    check = cli.command("check", timeout_s=60)
    assert "source table" in check.stdout and "installed as configured" in check.stdout, check.stdout
    status = json.loads(cli.command("status", "--json", timeout_s=60).stdout)
    assert status["source_tables"] == [{
        "table": "public.outboxevent", "installed_as_configured": True,
        "installed_lsn": before[0][0],
        "detail": f"public.outboxevent: copy trigger installed as configured (since LSN {before[0][0]})"}]

    changed = {"tables": [{"table": "public.outboxevent", "headers": {"type": "type"}}]}
    stale = ctx.relay({"source": changed}, name="stale").command("check", timeout_s=60)
    assert stale.returncode != 0
    assert "public.outboxevent: copy function differs from the config: run `outbox-relay migrate`" in stale.stdout
    third = _migrate(ctx, changed)
    assert "source   public.outboxevent: updated" in third.stdout
    after = installed()
    assert after[0][0] == before[0][0] and after[0][2] == before[0][2]  # same LSN, same trigger
    assert after[0][4] != before[0][4]

    missing = _migrate(ctx, {"tables": [{"table": "public.outboxevent", "topic": "stream"}]},
                       expect_ok=False)
    assert missing.returncode != 0
    assert ("source table public.outboxevent (source.tables[0]) has no column \"stream\" for the "
            "topic: name the column holding it (source.tables[0].topic)") in missing.stderr
