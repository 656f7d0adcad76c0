"""Retention (`retention:`): the leader deletes published rows older than an age, in small
batches, through outbox.delete_published (schema 0006), and never a pending row.

- the SQL functions, as the relay's role: only old published (dead-lettered) rows go, at
  most max_rows a call, and the role cannot DELETE from the table itself;
- under sustained load with a 2 s age, both modes: published rows are deleted, the row count
  and the table's size (pg_total_relation_size, autovacuum on) stay flat, and Kafka has
  every event of every key, in order (a deleted pending row would be a gap);
- retention.enabled: false deletes nothing; dead-lettered rows are kept unless
  dead_lettered_after_s is set.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

from harness import enqueue, hold, wait_until
from harness.checks import KEYS_100, start_load
from harness.faults import read_topic

pytestmark = pytest.mark.timeout(300)

LOAD_S = 32.0
AGE_S = 2


@pytest.fixture(params=["polling", "replication"])
def mode(request) -> str:
    return request.param


def _as_relay_role(c):
    c.execute("SET ROLE outbox_relay")


@pytest.mark.parametrize("mode", ["polling"], indirect=True)
def test_the_functions_delete_only_old_published_or_dead_lettered_rows(ctx):
    import psycopg

    with ctx.connect() as c:
        c.execute("""
            INSERT INTO outbox.events (topic, key, payload, created_at, published_at, dead_lettered_at)
            SELECT 't', 'k' || g, 'x'::bytea, now() - interval '2 days', NULL::timestamptz, NULL::timestamptz
                   FROM generate_series(1, 5) g                                                          -- old, pending
            UNION ALL SELECT 't', 'p' || g, 'x', now() - interval '2 days', now() - interval '1 day', NULL
                      FROM generate_series(1, 7) g                                                      -- old, published
            UNION ALL SELECT 't', 'n', 'x', now(), now(), NULL                                          -- published just now
            UNION ALL SELECT 't', 'd', 'x', now() - interval '2 days', NULL, now() - interval '1 day'   -- dead-lettered
        """)
        _as_relay_role(c)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM outbox.events WHERE published_at IS NOT NULL")
        assert c.execute("SELECT outbox.delete_published('1 hour', 3)").fetchone()[0] == 3  # max_rows
        assert c.execute("SELECT outbox.delete_published('1 hour', 100)").fetchone()[0] == 4
        assert c.execute("SELECT outbox.delete_published('1 hour', 100)").fetchone()[0] == 0
        left = c.execute("SELECT key, published_at IS NOT NULL, dead_lettered_at IS NOT NULL "
                         "FROM outbox.events ORDER BY id").fetchall()
        assert left == [(f"k{g}", False, False) for g in range(1, 6)] + [("n", True, False), ("d", False, True)]
        assert c.execute("SELECT outbox.delete_dead_lettered('2 days', 100)").fetchone()[0] == 0  # not old enough
        assert c.execute("SELECT outbox.delete_dead_lettered('1 hour', 100)").fetchone()[0] == 1
        assert c.execute("SELECT count(*) FROM outbox.events WHERE published_at IS NULL").fetchone()[0] == 5
        # the plan uses the index of schema 0005, not a scan of the table
        c.execute("RESET ROLE")
        c.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN SELECT id FROM outbox.events WHERE published_at < now() - interval '1 hour' "
            "ORDER BY published_at LIMIT 1000 FOR UPDATE SKIP LOCKED").fetchall())
        assert "events_published_at_idx" in plan, plan


@pytest.fixture
def fast_autovacuum(pg):
    """Autovacuum every second (server-wide, restored after): the test's 30 s must see it
    work as a day would with the default 1 min naptime."""
    with pg.connect("postgres", autocommit=True) as c:
        c.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        c.execute("SELECT pg_reload_conf()")
    yield
    with pg.connect("postgres", autocommit=True) as c:
        c.execute("ALTER SYSTEM RESET autovacuum_naptime")
        c.execute("SELECT pg_reload_conf()")


def _check_every_key_complete_and_in_order(ctx, records) -> int:
    """From Kafka alone (rows are deleted): per key, first deliveries are 1..final seq."""
    final = dict(ctx._query("SELECT key, seq FROM shop.key_state"))
    firsts: dict = defaultdict(list)
    seen: dict = defaultdict(set)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        p = json.loads(r.value)
        if p["seq"] not in seen[p["key"]]:
            seen[p["key"]].add(p["seq"])
            firsts[p["key"]].append(p["seq"])
    events = 0
    for key, n in final.items():
        assert firsts.get(key, []) == list(range(1, n + 1)), (
            f"key {key}: Kafka has first deliveries {firsts.get(key, [])[:20]}..., expected 1..{n}")
        events += n
    return events


def test_published_rows_are_deleted_under_load_and_the_table_stays_flat(ctx, fast_autovacuum):
    topic, writers = start_load(ctx, 10**9, keys=KEYS_100, threads=2, retry=True)
    relay = ctx.relay({"retention": {"published_after_s": AGE_S, "interval_ms": 500, "batch_size": 500},
                       "source": {"replication": {"status_interval_ms": 1000}}} if ctx.mode == "replication"
                      else {"retention": {"published_after_s": AGE_S, "interval_ms": 500, "batch_size": 500}})
    relay.start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay, timeout_s=60)
    with ctx.connect() as c:  # a poison row: dead-lettered, and kept (dead_lettered_after_s 0)
        c.execute("INSERT INTO outbox.events (topic, key, payload) VALUES ('bad topic!', 'k', 'x')")
    writers.start()
    t0 = time.monotonic()
    samples = []  # (t, rows, published rows, table+indexes bytes, heap bytes, details)

    def sample():
        relay.assert_running("under load")
        rows, published, size, heap, dead, vacuums = ctx._query(
            "SELECT count(*), count(published_at), pg_total_relation_size('outbox.events'), "
            "pg_relation_size('outbox.events'), (SELECT n_dead_tup FROM pg_stat_user_tables "
            "WHERE relid = 'outbox.events'::regclass), (SELECT autovacuum_count FROM pg_stat_user_tables "
            "WHERE relid = 'outbox.events'::regclass) FROM outbox.events")[0]
        samples.append((time.monotonic() - t0, rows, published, size, heap, f"dead={dead} autovacuums={vacuums}"))

    while time.monotonic() - t0 < LOAD_S:
        hold(1.0, check=lambda: relay.assert_running("under load"))
        sample()
    writers.stop()
    writers.join(120)
    committed = writers.committed
    assert committed > 5000, f"only {committed} events written in {LOAD_S} s"

    # Drained and aged out: everything published is deleted, the poison row stays.
    wait_until(lambda: ctx._query(
        "SELECT count(*) FROM outbox.events WHERE dead_lettered_at IS NULL")[0][0] == 0,
        60, 0.2, "every published row deleted after the load", lambda: relay.assert_running("after the load"))
    dead = ctx._query("SELECT topic FROM outbox.events")
    assert dead == [("bad topic!",)], dead
    assert relay.terminate(60) == 0
    events = _check_every_key_complete_and_in_order(ctx, read_topic(ctx.kafka, topic))
    assert events == committed, (events, committed)

    mid = [x for x in samples if LOAD_S / 4 <= x[0] < LOAD_S / 2]
    late = [x for x in samples if x[0] >= 3 * LOAD_S / 4]
    rows_mid, rows_late = max(x[1] for x in mid), max(x[1] for x in late)
    size_mid, size_late = max(x[3] for x in mid), max(x[3] for x in late)
    heap_mid, heap_late = max(x[4] for x in mid), max(x[4] for x in late)
    # What keeping every row would take, from the first second (nothing deleted yet).
    per_row = samples[0][3] / max(1, samples[0][1])
    kept_all = per_row * committed
    rate = committed / LOAD_S
    ctx.note(
        f"retention ({ctx.mode}): {committed} events in {LOAD_S:.0f} s ({rate:.0f}/s), age {AGE_S} s: "
        f"rows at most {rows_mid} (8-16 s) and {rows_late} (24-32 s); table at most "
        f"{heap_mid / 1e6:.1f} / {heap_late / 1e6:.1f} MB, with indexes {size_mid / 1e6:.1f} / "
        f"{size_late / 1e6:.1f} MB (keeping every row: about {kept_all / 1e6:.0f} MB)"
    )
    log = "\n".join(f"{t:5.1f}s rows={r} published={p} total={sz} heap={h} {d}" for t, r, p, sz, h, d in samples)
    # Without retention rows and bytes would double between the two windows (all kept);
    # with it they stay near rate x (age + interval + marking delay), and the space of
    # deleted rows is reused once autovacuum has passed.
    assert rows_late < 0.25 * committed, log
    assert rows_late <= 1.5 * rows_mid + 2000, log
    assert heap_late <= 2 * heap_mid, log
    assert size_late <= 0.35 * kept_all, log


@pytest.mark.parametrize("mode", ["polling"], indirect=True)
def test_retention_off_keeps_rows_and_dead_lettered_rows_go_only_when_asked(ctx):
    topic = ctx.topic()
    off = ctx.relay({"retention": {"enabled": False, "published_after_s": 1, "interval_ms": 100}}, name="off")
    off.start()
    with ctx.connect() as c:
        for i in range(200):
            enqueue(c, topic, f"k{i % 10}", b"x")
        c.execute("INSERT INTO outbox.events (topic, key, payload) VALUES ('bad topic!', 'k', 'x')")
    wait_until(lambda: ctx.counts() == (201, 200), 60, 0.05, "200 rows published", lambda: off.assert_running("off"))
    wait_until(lambda: ctx._query("SELECT count(*) FROM outbox.events WHERE dead_lettered_at IS NOT NULL")[0][0] == 1,
               30, 0.05, "the poison row dead-lettered")
    # 3 s: the rows are older than the age (1 s) for 30 rounds of the interval (100 ms)
    hold(3.0, check=lambda: off.assert_running("retention off"))
    assert ctx.counts() == (201, 200), ctx.counts()
    assert off.terminate(60) == 0
    assert "retention on" not in off.log_text() and "[retention]" not in off.log_text()

    # on, dead-lettered rows kept: the published rows go, the poison row stays
    keep = ctx.relay({"retention": {"published_after_s": 1, "interval_ms": 100}}, name="keep")
    keep.start()
    wait_until(lambda: ctx.counts() == (1, 0), 30, 0.1, "published rows deleted, the dead-lettered one kept",
               lambda: keep.assert_running("retention on"))
    assert "dead-lettered rows kept" in keep.log_text()
    hold(1.5, check=lambda: keep.assert_running("retention on"))  # 15 rounds: still kept
    assert ctx.counts() == (1, 0)
    assert keep.terminate(60) == 0

    on = ctx.relay({"retention": {"published_after_s": 1, "dead_lettered_after_s": 2, "interval_ms": 100}},
                   name="on")
    on.start()
    wait_until(lambda: ctx.counts()[0] == 0, 30, 0.1, "the dead-lettered row deleted",
               lambda: on.assert_running("retention on"))
    assert on.terminate(60) == 0
    assert "retention on: published rows deleted 1 s after publishing, dead-lettered rows after 2 s" in on.log_text()
