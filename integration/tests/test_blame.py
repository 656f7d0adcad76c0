"""A row is dead-lettered only for a reason proven its own; a topic that cannot take
messages waits without blocking the others.

Before: a topic whose max.message.bytes was below the producer's batch got every row of a
batch dead-lettered (Kafka answers "too large" for the whole produce request), and an
unknown topic held each batch for about 30 s, then its rows were dead-lettered after
relay.max_attempts."""

from __future__ import annotations

import time

import pytest

from harness import enqueue, wait_until
from harness.replication import lsn_int
from test_http import metric  # /metrics of a relay, one series


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


def _dead(ctx):
    return ctx._query("SELECT id, octet_length(payload), last_error FROM outbox.events "
                      "WHERE dead_lettered_at IS NOT NULL ORDER BY id")


def test_a_batch_level_too_large_blames_only_the_row_too_large_on_its_own(ctx):
    topic = ctx.topic(partitions=2, config={"max.message.bytes": "20000"})
    relay = ctx.relay().start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    total = 300
    with ctx.connect() as c:
        for i in range(total):
            enqueue(c, topic, f"k{i % 4}", bytes(500))
            if i == 150:
                enqueue(c, topic, "k-big", bytes(30000))  # above the topic's limit alone
    wait_until(lambda: ctx._query("SELECT count(*) FROM outbox.events "
                                  "WHERE published_at IS NULL AND dead_lettered_at IS NULL")[0][0] == 0,
               120, 0.1, "every row published or dead-lettered", lambda: relay.assert_running())
    dead = _dead(ctx)
    assert [d[1] for d in dead] == [30000], dead  # only the row too large on its own
    assert "sent alone" in dead[0][2] and "too large" in dead[0][2].lower(), dead
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    assert len(records) == total
    for k in range(4):  # per-key order through the one-by-one retries
        ids = [int(r.headers["outbox-id"]) for r in records if r.key == f"k{k}"]
        assert ids == sorted(ids)
    ctx.note(f"{total} rows of 500 B published, 1 of 30,000 B dead-lettered: {dead[0][2][:80]}")


def test_an_unknown_topic_waits_and_the_others_flow(ctx):
    missing = ctx.topic("missing", create=False)
    good = ctx.topic()
    relay = ctx.relay({"kafka": {"properties": {"allow.auto.create.topics": "false"}},
                       "relay": {"backoff_max_ms": 2000}}).start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    with ctx.connect() as c:
        for i in range(20):
            enqueue(c, missing, f"m{i % 2}", f"m{i}".encode())
            enqueue(c, good, "g", f"g{i}".encode())
    reader = ctx.reader(good)
    t0 = time.monotonic()
    assert reader.wait_for(lambda rs: len(rs) >= 20, 20), relay.log_tail()
    ctx.note(f"the other topic's 20 rows in {time.monotonic() - t0:.1f}s while {missing} is unknown")
    wait_until(lambda: "cannot take messages" in relay.log_text(), 30, 0.1,
               "the relay saying the topic waits")
    with ctx.connect() as c:  # more traffic for the good topic keeps flowing
        for i in range(20, 40):
            enqueue(c, good, "g", f"g{i}".encode())
    assert reader.wait_for(lambda rs: len(rs) >= 40, 20), relay.log_tail()
    assert _dead(ctx) == []
    ctx.kafka.create_topic(missing, 6)  # the operator creates it
    ctx.wait_all_published(60, 60, relay)
    assert _dead(ctx) == []
    records = ctx.kafka.consume_all(missing, 20, timeout_s=60)
    for k in ("m0", "m1"):
        values = [r.value for r in records if r.key == k]
        assert values == sorted(values, key=lambda v: int(v[1:])), values


def test_a_row_the_broker_refuses_as_too_large_is_blamed_with_a_producer_limit_above_the_brokers(ctx):
    # The producer's message.max.bytes raised above the broker's (1 MB): librdkafka lets the
    # 1.5 MB row through, the broker refuses it, and with the idempotent producer's gapless
    # guarantee that refusal is a fatal producer error. Before: the producer was re-created
    # and the row re-sent with others for ever, its partition blocked, never dead-lettered.
    topic = ctx.topic(partitions=1)
    relay = ctx.relay({"kafka": {"properties": {"message.max.bytes": "4000000"}}}).start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    total = 60
    with ctx.connect() as c:
        for i in range(total):
            enqueue(c, topic, f"k{i % 3}", f"v{i}".encode())
            if i == 30:
                enqueue(c, topic, "k-big", bytes(1_500_000))
    wait_until(lambda: ctx._query("SELECT count(*) FROM outbox.events "
                                  "WHERE published_at IS NULL AND dead_lettered_at IS NULL")[0][0] == 0,
               120, 0.2, "every row published or dead-lettered", lambda: relay.assert_running())
    dead = _dead(ctx)
    assert [d[1] for d in dead] == [1_500_000], dead
    assert "too large" in dead[0][2].lower(), dead
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    assert len(records) == total
    for k in range(3):
        ids = [int(r.headers["outbox-id"]) for r in records if r.key == f"k{k}"]
        assert ids == sorted(ids)
    ctx.note(f"{total} rows published, the 1.5 MB one dead-lettered: {dead[0][2][:100]}")


def test_a_fatal_producer_error_resends_none_of_the_rows_kafka_already_took(ctx):
    # A NULL key on a compacted topic: the broker refuses that record (INVALID_RECORD), a
    # fatal gap-less error for the idempotent producer. Before: the relay purged every message
    # in flight, including those of other partitions the broker had already written, and the
    # re-created producer (a new producer id) wrote them again: 1,007 messages for 600 rows.
    topic = ctx.topic(partitions=6, config={"cleanup.policy": "compact"})
    relay = ctx.relay().start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    with ctx.connect() as c:
        with c.transaction():
            for i in range(300):
                enqueue(c, topic, f"k{i % 40}", f"a{i}".encode())
            enqueue(c, topic, None, b"no key")
            for i in range(300):
                enqueue(c, topic, f"k{i % 40}", f"b{i}".encode())
    wait_until(lambda: ctx._query("SELECT count(*) FROM outbox.events "
                                  "WHERE published_at IS NULL AND dead_lettered_at IS NULL")[0][0] == 0,
               120, 0.2, "every row published or dead-lettered", lambda: relay.assert_running())
    dead = _dead(ctx)
    assert len(dead) == 1 and "sent alone" in dead[0][2], dead
    records = ctx.kafka.consume_all(topic, 600, timeout_s=60)
    ids = [int(r.headers["outbox-id"]) for r in records]
    assert len(ids) == len(set(ids)) == 600, f"{len(ids)} messages for 600 rows"
    for k in range(40):
        key_ids = [int(r.headers["outbox-id"]) for r in records if r.key == f"k{k}"]
        assert key_ids == sorted(key_ids)
    ctx.note(f"600 rows published once each around a fatal producer error: {dead[0][2][:90]}")


def test_a_refused_topic_far_past_batch_size_holds_none_of_the_others_across_a_restart(ctx):
    """Regression: in replication mode, once batch_size rows of a refused topic were parked the
    stream stopped being read, every topic stalled, the slot held WAL back, and after a restart
    the drain read the refused rows again every turn. Here 10x batch_size rows of 20 kB wait
    for their topic, in both modes, while the other topic flows, before and after a restart."""
    batch = 20
    missing = ctx.topic("refused", create=False)
    good = ctx.topic()
    cfg = {"kafka": {"properties": {"allow.auto.create.topics": "false"}},
           "relay": {"backoff_max_ms": 2000},
           "source": {"polling": {"batch_size": batch}}}
    relay = ctx.relay(cfg).start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    reader = ctx.reader(good)

    def write(n, start):
        with ctx.connect() as c:
            for i in range(start, start + n):
                with c.transaction():
                    enqueue(c, missing, f"m{i % 3}", i.to_bytes(4, "big") + bytes(20_000))
                    enqueue(c, good, "g", f"g{i}".encode())

    write(10 * batch, 0)
    assert reader.wait_for(lambda rs: len(rs) >= 10 * batch, 60), relay.log_tail()
    wait_until(lambda: metric(relay, "outbox_relay_blocked_topics") == 1, 30, 0.1,
               "outbox_relay_blocked_topics says one topic is blocked")
    if ctx.mode == "replication":
        with ctx.connect() as c:
            end = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        # The slot's confirmed position passes the refused rows: they wait in the table, and
        # the WAL behind them is not held for them (a keepalive's position once all is done).
        wait_until(lambda: (ctx.slot().confirmed_flush_lsn or 0) >= lsn_int(end), 60, 0.2,
                   "the slot confirmed past the refused rows", lambda: relay.assert_running())

    assert relay.terminate() == 0
    write(10 * batch, 10 * batch)  # while the relay is down
    relay = ctx.relay(cfg, name="relay2").start()
    assert reader.wait_for(lambda rs: len(rs) >= 20 * batch, 60), relay.log_tail()
    write(batch, 20 * batch)  # and after the restart, streamed or polled
    assert reader.wait_for(lambda rs: len(rs) >= 21 * batch, 60), relay.log_tail()
    assert _dead(ctx) == []
    pending = ctx._query("SELECT count(*) FROM outbox.events WHERE published_at IS NULL")[0][0]
    assert pending == 21 * batch, pending  # only the refused topic's rows wait

    ctx.kafka.create_topic(missing, 3)  # the operator creates it
    ctx.wait_all_published(21 * batch, 120, relay)
    records = ctx.kafka.consume_all(missing, 21 * batch, timeout_s=60)
    seq = [int.from_bytes(r.value[:4], "big") for r in records]
    assert len(seq) == len(set(seq)) == 21 * batch
    for k in range(3):
        values = [int.from_bytes(r.value[:4], "big") for r in records if r.key == f"m{k}"]
        assert values == sorted(values), values
    wait_until(lambda: metric(relay, "outbox_relay_blocked_topics") == 0, 30, 0.1,
               "outbox_relay_blocked_topics back to 0")
    ctx.note(f"{21 * batch} rows of 20 kB waited for their topic across a restart "
             f"({ctx.mode}); the other topic's {21 * batch} flowed meanwhile")
