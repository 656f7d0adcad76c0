"""Services must never fail because of the outbox: enqueue at every isolation level.

The NOTIFY hint once kept its "armed" flag in a table row that enqueue locked with
FOR UPDATE SKIP LOCKED. A REPEATABLE READ or SERIALIZABLE transaction whose snapshot
predated another writer's enqueue then failed with a serialization error inside enqueue.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from harness import enqueue, wait_until

LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_enqueue_in_an_old_snapshot_after_another_writer_enqueued(ctx, level):
    """Regression: at REPEATABLE READ and SERIALIZABLE, `enqueue` in a transaction whose
    snapshot predates another writer's committed `enqueue` failed with a serialization
    failure (40001)."""
    topic = ctx.topic()
    first = ctx.connect(autocommit=False)
    second = ctx.connect()
    try:
        first.execute(f"BEGIN ISOLATION LEVEL {level}")
        first.execute("SELECT count(*) FROM pg_class")  # the snapshot is taken here
        enqueue(second, topic, "b", b"from the second writer")  # commits first
        enqueue(first, topic, "a", b"from the first writer")  # failed with 40001 before the fix
        first.commit()
    finally:
        first.close()
        second.close()
    assert ctx._query("SELECT count(*) FROM outbox.events")[0][0] == 2


def test_concurrent_writers_at_every_isolation_level_never_fail(ctx):
    topic = ctx.topic()
    relay = ctx.relay().start()
    per_writer, writers_per_level = 150, 3
    writers = len(LEVELS) * writers_per_level
    with ctx.connect() as c:
        # A table per writer: SERIALIZABLE's predicate locks on shared business tables could
        # fail transactions for reasons of their own; only the outbox is shared here.
        for w in range(writers):
            c.execute(f"CREATE TABLE biz_{w} (n int NOT NULL)")
            c.execute(f"INSERT INTO biz_{w} VALUES (0)")
    errors: list[str] = []
    start = threading.Barrier(writers)

    def write(writer: int, level: str):
        try:
            with ctx.connect(autocommit=False) as c:
                start.wait(30)
                for i in range(per_writer):
                    c.execute(f"BEGIN ISOLATION LEVEL {level}")
                    c.execute(f"UPDATE biz_{writer} SET n = n + 1")
                    enqueue(c, topic, f"w{writer}", f"{writer}:{i}".encode())
                    c.commit()
        except psycopg.Error as e:
            errors.append(f"{level} writer {writer}: {e.sqlstate} {e}")

    threads = [threading.Thread(target=write, args=(w, level))
               for w, level in enumerate(l for l in LEVELS for _ in range(writers_per_level))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    total = len(threads) * per_writer
    ctx.wait_all_published(total, 60, relay)
    reader = ctx.reader(topic)
    assert reader.wait_for(lambda rs: len(rs) >= total, 60), relay.log_tail()
    for w in range(len(threads)):  # each writer's events in its own commit order
        values = [r.value for r in reader.records if r.key == f"w{w}"]
        assert values == [f"{w}:{i}".encode() for i in range(per_writer)]


def test_two_phase_commit_services_turn_the_notify_off_and_lose_nothing(ctx):
    # PostgreSQL refuses PREPARE TRANSACTION after a NOTIFY, and enqueue sends one when it is
    # the first write after the relay re-armed the hint: an XA/JTA service failed then.
    # Schema 0007: with outbox.notify = 'off' the service's enqueue sends none and leaves the
    # hint armed for the others; the relay still publishes its rows (polling interval).
    topic = ctx.topic(partitions=1)
    c = ctx.connect()
    rearm = "SELECT setval('outbox.relay_wakeup_seq', 1, false)"  # what the relay does
    c.execute(rearm)
    c.execute("BEGIN")
    enqueue(c, topic, "k", b"with notify")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="NOTIFY"):
        c.execute("PREPARE TRANSACTION 'outbox-it-1'")  # the failure the setting avoids
    c.execute("ROLLBACK")

    c.execute(rearm)
    c.execute("BEGIN")
    c.execute("SET LOCAL outbox.notify = 'off'")
    enqueue(c, topic, "k", b"prepared")
    c.execute("PREPARE TRANSACTION 'outbox-it-2'")
    c.execute("COMMIT PREPARED 'outbox-it-2'")
    assert c.execute("SELECT is_called FROM outbox.relay_wakeup_seq").fetchone()[0] is False  # still armed

    relay = ctx.relay({"source": {"polling": {"interval_ms": 200}}}).start()
    ctx.wait_all_published(1, 60, relay)
    records = ctx.kafka.consume_all(topic, 1, timeout_s=60)
    assert [r.value for r in records] == [b"prepared"]


# The service's own idempotency key (schema 0009): a retried business operation enqueues its
# event once. Untyped driver parameters need the casts: the 5-argument enqueue exists for a
# bytea and a jsonb payload.
KEYED = "SELECT outbox.enqueue(%s::text, %s::text, %s::bytea, %s::jsonb, %s::text)::text"


@pytest.mark.parametrize("level", LEVELS)
def test_a_retry_with_the_same_idempotency_key_returns_the_first_event(ctx, level):
    topic = ctx.topic(partitions=1)
    own_id = "0b9d6c3e-58a4-4f7e-9c41-2f55c2a1e7d0"  # the caller's own event id is a key too
    with ctx.connect(autocommit=False) as c:
        ids = []
        for attempt, key in [(1, "order-7-paid"), (2, "order-7-paid"), (1, own_id), (2, own_id)]:
            c.execute(f"BEGIN ISOLATION LEVEL {level}")
            ids.append(c.execute(KEYED, (topic, "7", f"try {attempt}".encode(), "{}", key)).fetchone()[0])
            c.commit()
        c.execute(f"BEGIN ISOLATION LEVEL {level}")  # the jsonb overload keys the same way
        ids.append(c.execute("SELECT outbox.enqueue(%s::text, %s::text, %s::jsonb, %s::jsonb, %s::text)::text",
                             (topic, "7", '{"try": 3}', "{}", "order-7-paid")).fetchone()[0])
        c.commit()
    assert ids[0] == ids[1] == ids[4] and ids[2] == ids[3] == own_id and ids[0] != own_id
    rows = ctx._query("SELECT event_id::text, payload FROM outbox.events ORDER BY id")
    assert [(r[0], bytes(r[1])) for r in rows] == [(ids[0], b"try 1"), (own_id, b"try 1")]
    relay = ctx.relay().start()
    ctx.wait_all_published(2, 60, relay)
    records = ctx.kafka.consume_all(topic, 2, timeout_s=60)
    assert sorted(r.headers["outbox-event-id"] for r in records) == sorted([ids[0], own_id])


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
@pytest.mark.parametrize("level", LEVELS)
def test_concurrent_calls_with_one_idempotency_key_enqueue_one_event(ctx, level, first_ends):
    """Two transactions with the same key in flight at once: the second waits for the first
    (only for it: a third with another key inserts meanwhile), then returns the first's id
    when it committed, or inserts its own when it rolled back; no serialization failure at
    any isolation level, even in a snapshot older than the first's commit."""
    topic = ctx.topic(partitions=1)
    with ctx.connect() as c:
        c.execute("CREATE TABLE biz_a (n int NOT NULL); INSERT INTO biz_a VALUES (0)")
        c.execute("CREATE TABLE biz_b (n int NOT NULL); INSERT INTO biz_b VALUES (0)")
    first, second, other = (ctx.connect(autocommit=False) for _ in range(3))
    first.execute(f"BEGIN ISOLATION LEVEL {level}")
    first.execute("UPDATE biz_a SET n = n + 1")
    first_id = first.execute(KEYED, (topic, "k", b"first", "{}", "op-1")).fetchone()[0]
    second.execute(f"BEGIN ISOLATION LEVEL {level}")
    second.execute("UPDATE biz_b SET n = n + 1")  # its snapshot predates the first's commit
    # Another key, while the first is open: no wait (a wait would end in lock_timeout).
    other.execute(f"BEGIN ISOLATION LEVEL {level}")
    other.execute(KEYED, (topic, "k", b"other", "{}", "op-2"))
    other.commit()

    result: dict = {}

    def call():
        try:
            result["id"] = second.execute(KEYED, (topic, "k", b"second", "{}", "op-1")).fetchone()[0]
            second.commit()
        except psycopg.Error as e:
            result["error"] = f"{e.sqlstate} {e}"

    t = threading.Thread(target=call)
    t.start()
    second_pid = second.info.backend_pid
    wait_until(lambda: ctx._query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                  (second_pid,))[0][0] == "Lock" or not t.is_alive(), 30,
               desc="the second call waits for the first transaction")
    blockers = ctx._query("SELECT pg_blocking_pids(%s)", (second_pid,))[0][0]
    assert blockers in ([first.info.backend_pid], []), blockers  # only the same key's transaction
    first.commit() if first_ends == "commit" else first.rollback()
    t.join(60)
    assert not t.is_alive() and "error" not in result, result
    assert result["id"] == first_id
    expected = [b"first" if first_ends == "commit" else b"second", b"other"]
    rows = ctx._query("SELECT payload FROM outbox.events WHERE event_id = outbox.event_id_for('op-1')")
    assert [bytes(r[0]) for r in rows] == expected[:1]
    relay = ctx.relay().start()
    ctx.wait_all_published(2, 60, relay)
    records = ctx.kafka.consume_all(topic, 2, timeout_s=60)
    assert sorted(r.value for r in records) == sorted(expected)
