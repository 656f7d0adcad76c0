"""`outbox-relay audit` against a real PostgreSQL and Kafka: a clean relay run audits
clean (exit 0); a duplicate, a late first delivery of an older id on a key and a row
marked published without a message are then counted, and the lost row and the order
violation make it exit 1."""

from __future__ import annotations

import json

from harness import Relay, enqueue

KEYS = [f"key-{i}" for i in range(10)]


def audit(relay: Relay, *args: str):
    """(exit code, parsed --json report or None, CompletedProcess)."""
    r = relay.command("audit", "--json", *args, timeout_s=120)
    report = json.loads(r.stdout) if r.returncode in (0, 1) and r.stdout.strip() else None
    return r.returncode, report, r


def explain(r) -> str:
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def produce(bootstrap: str, messages) -> None:
    """messages: (topic, partition, key, value, headers) written in this order."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 3})
    for topic, partition, key, value, headers in messages:
        p.produce(topic, value=value, key=key, headers=headers, partition=partition)
        p.flush(30)  # one at a time: the order in the partition is the order given
    assert p.flush(30) == 0


def insert_row(conn, topic: str, key: str, payload: bytes) -> tuple[int, str]:
    eid = enqueue(conn, topic, key, payload)
    return conn.execute("SELECT id FROM outbox.events WHERE event_id = %s", (eid,)).fetchone()[0], eid


def test_audit_clean_run_then_duplicate_order_violation_and_lost_row(ctx):
    total = 200
    topic = ctx.topic(partitions=3)
    with ctx.connect() as c:
        for i in range(total):
            enqueue(c, topic, KEYS[i % len(KEYS)], f"event {i}".encode(), {"type": "AuditTest"})
    relay = ctx.relay().start()
    ctx.wait_all_published(total, 60, relay)
    assert relay.terminate(60) == 0, relay.log_tail()

    # 1. what the relay wrote audits clean
    rc, rep, r = audit(relay)
    assert rc == 0, explain(r)
    assert rep["rows"] == total and rep["messages"] == total and rep["published"] == total, explain(r)
    for k in ("lost", "duplicates", "order_violations", "pending", "dead_lettered", "unknown", "foreign"):
        assert rep[k] == 0, f"{k}: {explain(r)}"
    assert rep["lost_examples"] == [] and rep["order_violation_examples"] == []
    text = relay.command("audit")
    assert text.returncode == 0, explain(text)
    assert "OK" in text.stdout and "order violations" in text.stdout, explain(text)

    # 2. faults written behind the relay's back
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    assert len(records) == total
    dup = records[len(records) // 2]
    with ctx.connect() as c:
        older_id, older_eid = insert_row(c, topic, "ooo", b"older")
        newer_id, newer_eid = insert_row(c, topic, "ooo", b"newer")
        lost_id, _ = insert_row(c, topic, "gone", b"lost")
        pending_id, _ = insert_row(c, topic, "wait", b"pending")
        c.execute(
            "UPDATE outbox.events SET published_at = now() WHERE id = ANY(%s)", ([older_id, newer_id, lost_id],)
        )
    assert older_id < newer_id < lost_id < pending_id

    def hdrs(eid, oid):
        return [("outbox-event-id", eid), ("outbox-id", str(oid))]

    produce(
        ctx.kafka.bootstrap,
        [
            (dup.topic, dup.partition, dup.key, dup.value, list(dup.header_list)),  # a redelivery
            (topic, 0, "ooo", b"newer", hdrs(newer_eid, newer_id)),
            (topic, 0, "ooo", b"older", hdrs(older_eid, older_id)),  # first delivery after a newer one
            (topic, 1, "x", b"no outbox headers", [("type", "other")]),  # foreign
            (topic, 2, "y", b"no such row", hdrs(newer_eid, 10**12)),  # unknown
        ],
    )

    rc, rep, r = audit(relay)
    assert rc == 1, explain(r)
    assert rep["rows"] == total + 4, explain(r)
    assert rep["messages"] == total + 5, explain(r)
    assert rep["published"] == total + 3, explain(r)
    assert rep["pending"] == 1, explain(r)
    assert rep["lost"] == 1 and rep["lost_examples"] == [lost_id], explain(r)
    assert rep["duplicates"] == 1, explain(r)
    assert rep["order_violations"] == 1, explain(r)
    (v,) = rep["order_violation_examples"]
    assert (v["topic"], v["partition"], v["key"]) == (topic, 0, "ooo"), explain(r)
    assert (v["outbox_id"], v["after_outbox_id"]) == (older_id, newer_id), explain(r)
    assert rep["foreign"] == 1 and rep["unknown"] == 1, explain(r)
    assert rep["dead_lettered"] == 0

    text = relay.command("audit")
    assert text.returncode == 1, explain(text)
    assert f"lost ids: {lost_id}" in text.stdout, explain(text)
    assert "FAILED" in text.stdout, explain(text)

    # 3. --since: only the rows created from the faulty ones on; the older rows' messages
    # are ignored, not unknown
    since = ctx._query("SELECT created_at::text FROM outbox.events WHERE id = %s", (older_id,))[0][0]
    rc, rep, r = audit(relay, "--since", since)
    assert rc == 1, explain(r)
    assert rep["rows"] == 4 and rep["lost"] == 1 and rep["order_violations"] == 1, explain(r)
    assert rep["duplicates"] == 0 and rep["unknown"] == 1 and rep["ignored"] == total + 1, explain(r)
    rc, rep, r = audit(relay, "--since", "1h")
    assert rc == 1 and rep["rows"] == total + 4, explain(r)
    rc, rep, r = audit(relay, "--since=2999-01-01")
    assert rc == 0 and rep["rows"] == 0 and rep["messages"] == 0, explain(r)  # no topic to read

    # 4. a bad --since is a usage error
    r = relay.command("audit", "--since", "yesterday")
    assert r.returncode == 2 and "--since" in r.stderr, explain(r)


def test_audit_exits_1_when_postgres_or_kafka_cannot_be_read(ctx):
    topic = ctx.topic(partitions=1)
    with ctx.connect() as c:
        enqueue(c, topic, "k", b"one")

    no_pg = ctx.relay({"postgres": {"dsn": "host=127.0.0.1 port=1 dbname=nothing user=postgres"}}, name="no-pg")
    r = no_pg.command("audit", timeout_s=60)
    assert r.returncode == 1 and "PostgreSQL" in r.stderr, explain(r)

    no_kafka = ctx.relay({"kafka": {"bootstrap_servers": "127.0.0.1:1"}}, name="no-kafka")
    r = no_kafka.command("audit", "--json", timeout_s=120)
    assert r.returncode == 1 and "Kafka" in r.stderr, explain(r)
    assert r.stdout == "", explain(r)
