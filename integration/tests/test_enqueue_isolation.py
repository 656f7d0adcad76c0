"""Services must never fail because of the outbox: enqueue at every isolation level.

The NOTIFY hint once kept its "armed" flag in a table row that enqueue locked with
FOR UPDATE SKIP LOCKED. A REPEATABLE READ or SERIALIZABLE transaction whose snapshot
predated another writer's enqueue then failed with a serialization error inside enqueue.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from harness import enqueue

LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_enqueue_in_an_old_snapshot_after_another_writer_enqueued(ctx, level):
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
