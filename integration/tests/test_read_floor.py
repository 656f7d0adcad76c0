"""The read floor (invariant read-floor, relay/pg/read_floor.h): polling reads start at an id
below which no row is pending, or ever will be again, instead of at the pending index's first
entry, which after a large backlog is a walk through the dead entries of every row marked
since the last vacuum. The floor rises only past ids whose transactions all ended (a fence
read from pg_locks): a transaction that holds a smaller id and has not committed must never be
stepped over, or its row is lost."""

from __future__ import annotations

import re

import pytest

from harness import audit, enqueue, wait_until
from harness.checks import assert_no_loss

FLOOR_LINE = re.compile(r"read floor (\d+): passed up to id (\d+); (.*)")


def _floor_lines(relay) -> list[tuple[int, int, str]]:
    return [(int(m.group(1)), int(m.group(2)), m.group(3))
            for m in FLOOR_LINE.finditer(relay.log_text())]


def _publish_one(ctx, relay, topic: str, payload: bytes) -> int:
    """Commits one row and waits until it is marked; returns its id."""
    with ctx.connect() as c:
        eid = enqueue(c, topic, "other", payload)
        row_id = c.execute("SELECT id FROM outbox.events WHERE event_id = %s::uuid",
                           (eid,)).fetchone()[0]
    wait_until(lambda: ctx._query("SELECT published_at IS NOT NULL FROM outbox.events WHERE id = %s",
                                  (row_id,))[0][0], 60, 0.02, f"row {row_id} marked",
               lambda: relay.assert_running("while a row is published"))
    return row_id


def _fence_statements_after(ctx, relay, topic: str, after_lines: int, count: int) -> None:
    """Publishes rows one at a time until the relay logged `count` more fence statements (it
    runs one before a read, at most every 100 ms); at most 500 rows."""
    for i in range(500):
        if len(_floor_lines(relay)) >= after_lines + count:
            return
        _publish_one(ctx, relay, topic, f"filler {i}".encode())
    pytest.fail(f"fewer than {count} fence statements logged after 500 rows:\n{relay.log_tail()}")


@pytest.mark.parametrize("holder", ["open", "prepared", "prepared_while_fenced"])
def test_the_floor_never_passes_a_transaction_holding_a_smaller_id(ctx, holder):
    """A transaction took an id (A) and has not committed (open, or prepared for two-phase
    commit, which keeps its locks under no process; or prepared while a fence waits for it:
    before PostgreSQL 14.1 / 13.5 its locks changed hands then and the fence saw it end);
    rows with larger ids commit and are
    published around it. The floor must stay at or below A's id while A is open, however many
    fences the relay takes; then A commits and is published. A fence that ignored A would
    raise the floor past it (the next statement finds no pending row below the rows committed
    since) and A would never be read."""
    topic = ctx.topic(partitions=1)
    a = ctx.connect(autocommit=False)
    a.execute("SET LOCAL outbox.notify = 'off'")  # PREPARE TRANSACTION refuses a NOTIFY
    eid_a = enqueue(a, topic, "a", b"late A")
    id_a = a.execute("SELECT id FROM outbox.events WHERE event_id = %s::uuid", (eid_a,)).fetchone()[0]
    if holder == "prepared":
        a.execute(f"PREPARE TRANSACTION 'floor_{ctx.name}'")
    try:
        _floor_stays_below_the_holder(ctx, topic, a, holder, id_a)
    finally:  # a prepared transaction outlives its connection and would keep the database
        c = ctx.connect()
        if c.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (f"floor_{ctx.name}",)).fetchone():
            c.execute(f"ROLLBACK PREPARED 'floor_{ctx.name}'")


def _floor_stays_below_the_holder(ctx, topic: str, a, holder: str, id_a: int) -> None:
    relay = ctx.relay({"log": {"level": "trace"}}).start()
    id_b = _publish_one(ctx, relay, topic, b"B")
    assert id_b > id_a
    # A fence after B's commit has X >= B's id: every statement from here on must see A hold it.
    _fence_statements_after(ctx, relay, topic, len(_floor_lines(relay)), 5)
    lines = _floor_lines(relay)
    assert all(floor <= id_a for floor, _, _ in lines), (
        f"the floor passed the open transaction's id {id_a}:\n" + "\n".join(map(str, lines)))
    assert all(passed < id_b for _, passed, _ in lines), (
        f"a fence at or above id {id_b} passed while the transaction holding id {id_a} is open:\n"
        + "\n".join(map(str, lines)))
    assert any("waits for" in rest for _, _, rest in lines), lines
    if holder == "prepared_while_fenced":
        a.execute(f"PREPARE TRANSACTION 'floor_{ctx.name}'")
        _fence_statements_after(ctx, relay, topic, len(_floor_lines(relay)), 5)
        lines = _floor_lines(relay)
        assert all(floor <= id_a and passed < id_b for floor, passed, _ in lines), (
            f"the fence waiting for the transaction holding id {id_a} passed once it was "
            "prepared:\n" + "\n".join(map(str, lines)))

    if holder.startswith("prepared"):
        ctx.connect().execute(f"COMMIT PREPARED 'floor_{ctx.name}'")
    else:
        a.commit()
    total = ctx.counts()[0]
    ctx.wait_all_published(total, 60, relay)
    # And with A ended, the floor does rise past it: it is not 0 for want of trying.
    start = len(_floor_lines(relay))
    for i in range(500):
        if any(floor > id_a for floor, _, _ in _floor_lines(relay)[start:]):
            break
        _publish_one(ctx, relay, topic, f"after {i}".encode())
    else:
        pytest.fail(f"the floor never rose past {id_a} once its transaction ended:\n{relay.log_tail()}")
    total = ctx.counts()[0]
    rep = audit(ctx.rows(), ctx.kafka.consume_all(topic, total, timeout_s=60))
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()


def test_a_sequence_given_a_cache_while_the_relay_runs_turns_the_floor_off(ctx):
    """Regression: the premises (cache 1 among them) were checked only when the connection
    opened. Given a cache while the relay ran, a writer's cached id committed below the floor
    and waited for the floor's next reset (up to 60 s). Now every fence statement checks them:
    the relay says the floor is off, and the row with the small id is published."""
    topic = ctx.topic(partitions=1)
    relay = ctx.relay({"log": {"level": "trace"}}).start()
    _publish_one(ctx, relay, topic, b"first")
    with ctx.connect() as c:
        c.execute("ALTER TABLE outbox.events ALTER COLUMN id SET CACHE 20")
    w1, w2 = ctx.connect(), ctx.connect()
    enqueue(w1, topic, "w1", b"w1 first")  # w1 takes a block of 20 ids
    enqueue(w2, topic, "w2", b"w2 first")  # w2 the next block
    wait_until(lambda: "the read floor is off" in relay.log_text(), 60, 0.05,
               "the relay saying the floor is off", lambda: relay.assert_running("after SET CACHE"))
    ctx.wait_all_published(ctx.counts()[0], 60, relay)
    enqueue(w1, topic, "w1", b"w1 second")  # an id from w1's block, below w2's
    total = ctx.counts()[0]
    ctx.wait_all_published(total, 60, relay)
    rep = audit(ctx.rows(), ctx.kafka.consume_all(topic, total, timeout_s=60))
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()


def test_ids_from_a_cached_sequence_keep_the_floor_at_zero(ctx):
    """With a sequence cache, a connection hands out ids it took earlier: an id smaller than
    one already committed can come from a transaction that started later, after any fence.
    The relay then keeps no floor (and says so) and still publishes everything."""
    topic = ctx.topic(partitions=1)
    with ctx.connect() as c:
        c.execute("ALTER TABLE outbox.events ALTER COLUMN id SET CACHE 20")
    relay = ctx.relay({"log": {"level": "trace"}}).start()
    for i in range(20):
        _publish_one(ctx, relay, topic, f"row {i}".encode())
    assert "the read floor is off" in relay.log_text(), relay.log_tail()
    assert _floor_lines(relay) == [], "a fence was taken on a cached sequence"
    rep = audit(ctx.rows(), ctx.kafka.consume_all(topic, 20, timeout_s=60))
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()


def _index_blocks(ctx) -> int:
    """Pages of the pending index read so far, once every other client of the test's database
    has exited (a backend reports its last statistics as it exits)."""
    wait_until(lambda: ctx._query(
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")[0][0],
        60, 0.05, "the other clients of the database gone")
    ctx._query("SELECT pg_stat_clear_snapshot()")
    return ctx._query("SELECT idx_blks_hit + idx_blks_read FROM pg_statio_user_indexes "
                      "WHERE indexrelid = 'outbox.events_pending_idx'::regclass")[0][0]


def test_the_floor_rises_to_a_row_that_waits_for_its_topic(ctx):
    """Regression: a fence raised the floor only when no row was pending below its bound, the
    smallest row read and not recorded. Once every row read was recorded that bound was the
    highest id passed + 1, so one row pending above the floor and never read (its topic
    unknown to Kafka, skipped by every read) kept the floor below it for as long as it
    waited, and every read walked the pending index from there. It now rises to the first
    row still pending. Here the topic is found unknown first (its row then dead-lettered by
    hand, so that it holds nothing), then 1,001 rows commit in one transaction with one row
    of that topic in the middle: the floor must reach that row's id."""
    missing = ctx.topic("missing", create=False)
    good = ctx.topic()
    relay = ctx.relay({"kafka": {"properties": {"allow.auto.create.topics": "false"}},
                       "log": {"level": "trace"}}).start()
    with ctx.connect() as c:
        enqueue(c, missing, "m", b"first")
    wait_until(lambda: "cannot take messages" in relay.log_text(), 30, 0.05,
               "the relay saying the topic waits", lambda: relay.assert_running("first row"))
    with ctx.connect() as c:
        c.execute("UPDATE outbox.events SET dead_lettered_at = now() WHERE topic = %s", (missing,))
        c.execute("INSERT INTO outbox.events (topic, key, payload) "
                  "SELECT CASE WHEN g = 501 THEN %s ELSE %s END, 'k' || (g %% 7), "
                  "convert_to(g::text, 'UTF8') FROM generate_series(1, 1001) g", (missing, good))
        waiting = c.execute("SELECT id FROM outbox.events WHERE topic = %s "
                            "AND dead_lettered_at IS NULL", (missing,)).fetchone()[0]
    marked = lambda: ctx._query("SELECT count(*) FROM outbox.events WHERE topic = %s "  # noqa: E731
                                "AND published_at IS NOT NULL", (good,))[0][0]
    wait_until(lambda: marked() == 1000, 60, 0.05, "the other topic's 1,000 rows marked",
               lambda: relay.assert_running("while the rows are published"))
    wait_until(lambda: any(floor == waiting for floor, _, _ in _floor_lines(relay)), 30, 0.05,
               f"the floor at the waiting row's id {waiting} "
               f"(last: {(_floor_lines(relay) or [(0, 0, '')])[-1][0]})",
               lambda: relay.assert_running("while the floor rises"))
    assert all(floor <= waiting for floor, _, _ in _floor_lines(relay)), relay.log_tail()
    assert relay.terminate(60) == 0, relay.log_tail()


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_reads_after_a_backlog_do_not_walk_the_entries_of_the_rows_it_marked(ctx, mode):
    """Regression: every read by state, the read-ahead guard and the idle check began at the
    pending index's first entry and walked the entries of every row marked since the last
    vacuum: a drain did so at each read-ahead (its reads slowed as it went: 0.64x of the
    1,000,000-row rate at 10,000,000), and after it each read took 3.2 ms (1,000,000 rows)
    to 13.7 ms (10,000,000; p99 1.4 s at 1,000 events/s). Here vacuum is off for the table
    and 100,000 rows are drained (polling; replication: the drain at start): the pages of
    the pending index read by the drain must stay within a few passes over the index, and
    (polling) then rows come one at a time, each reading far fewer pages than the index has.
    Measured: the drain 12-13 passes over the index with the floor, 110 without (quadratic in
    the backlog); a row after it 34 pages with the floor, 559 without."""
    topic = ctx.topic(partitions=3)
    backlog = 100_000
    with ctx.connect() as c:
        c.execute("ALTER TABLE outbox.events SET (autovacuum_enabled = off)")
        c.execute("INSERT INTO outbox.events (topic, key, payload) SELECT %s, 'k' || (g %% 100), "
                  "convert_to(g::text, 'UTF8') FROM generate_series(1, %s) g", (topic, backlog))
    # The metrics' backlog count walks the index too, on its own connection: not every 5 s here.
    quiet_metrics = {"http": {"stats_interval_ms": 3_600_000}}
    at_start = _index_blocks(ctx)
    drain = ctx.relay(quiet_metrics, name="drain").start()
    ctx.wait_all_published(backlog, 180, drain)
    assert drain.terminate(60) == 0, drain.log_tail()
    leaf_pages = ctx._query("SELECT pg_relation_size('outbox.events_pending_idx') / 8192")[0][0]
    assert leaf_pages >= 200, f"inconclusive: the pending index has {leaf_pages} pages"
    after_drain = _index_blocks(ctx)
    passes = (after_drain - at_start) / leaf_pages
    ctx.note(f"{mode}: a {backlog}-row drain read {after_drain - at_start} pending-index pages "
             f"({passes:.1f} times the index's {leaf_pages})")
    assert passes < 30, (
        f"the drain read the pending index {passes:.0f} times over ({after_drain - at_start} pages, "
        f"{leaf_pages} in the index)\n{drain.log_tail()}")
    if mode == "replication":
        return  # rows written from here on come by the stream, not from the table

    # A new relay (its floor starts at 0: one walk), rows one at a time, then it exits.
    rows = 100
    relay = ctx.relay(quiet_metrics).start()
    for i in range(rows):
        _publish_one(ctx, relay, topic, f"after {i}".encode())
    assert relay.terminate(60) == 0, relay.log_tail()
    per_row = (_index_blocks(ctx) - after_drain) / rows
    assert per_row < leaf_pages / 4, (
        f"{per_row:.0f} pending-index pages read per row after the backlog "
        f"(the index has {leaf_pages} pages)\n{relay.log_tail()}")
    ctx.note(f"after a {backlog}-row drain: {per_row:.1f} pending-index pages read per row "
             f"(index {leaf_pages} pages)")
