"""Event formats consumers expect: W3C trace context carried from the service's transaction
(schema 0012), CloudEvents' Kafka binding in binary mode (message.cloudevents.*), and the
options that make the relay's output Debezium's outbox EventRouter's (message.id_header,
message.topic_template, message.json_string_key / json_string_value, and librdkafka's
murmur2_random partitioner, where Java's producer puts a key). About 25 s for the five cases.
"""

from __future__ import annotations

import datetime
import json

import pytest


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def _enqueue(c, topic: str, key: str, headers: dict | None = None) -> str:
    return c.execute("SELECT outbox.enqueue(%s::text, %s::text, %s::jsonb, %s::jsonb)::text",
                     (topic, key, json.dumps({"k": key}), json.dumps(headers or {}))).fetchone()[0]


def _trace_headers(record) -> list:
    return [(n, v) for n, v in record.header_list if n in ("traceparent", "tracestate")]


def test_a_trace_context_written_by_a_service_arrives_unchanged(ctx):
    """Both ways a service hands its W3C trace context on (the headers of enqueue, SET LOCAL
    outbox.traceparent / outbox.tracestate) reach Kafka byte for byte; a row's own header wins
    over the settings; a malformed traceparent passes untouched (tracing never fails the
    business transaction); a setting ends with its transaction, on the same connection."""
    topic = ctx.topic()
    relay = ctx.relay().start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    want = {}
    with ctx.connect(autocommit=False) as c:
        # 1. In the headers (what a propagator's inject() into a map gives).
        want["headers"] = [("traceparent", PARENT), ("tracestate", STATE)]
        _enqueue(c, topic, "headers", {"traceparent": PARENT, "tracestate": STATE})
        c.commit()
        # 2. Settings of the transaction: every enqueue of it carries them.
        c.execute("SELECT set_config('outbox.traceparent', %s, true), "
                  "set_config('outbox.tracestate', %s, true)", (PARENT, STATE))
        want["set-local-1"] = [("traceparent", PARENT), ("tracestate", STATE)]
        want["set-local-2"] = [("traceparent", PARENT), ("tracestate", STATE)]
        _enqueue(c, topic, "set-local-1")
        _enqueue(c, topic, "set-local-2", {"type": "OrderPlaced"})
        # 3. The row's own traceparent wins, and the setting's tracestate is not mixed in.
        other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        want["own-wins"] = [("traceparent", other)]
        _enqueue(c, topic, "own-wins", {"traceparent": other})
        c.commit()
        # 4. Malformed, both ways: passed through untouched.
        bad = "not a traceparent \u00e9"
        c.execute("SET LOCAL outbox.traceparent = 'ff-zz'")
        want["malformed-setting"] = [("traceparent", "ff-zz")]
        _enqueue(c, topic, "malformed-setting")
        want["malformed-header"] = [("traceparent", bad)]
        _enqueue(c, topic, "malformed-header", {"traceparent": bad})
        c.commit()
        # 5. The next transaction on the same connection set nothing: no trace headers.
        want["after"] = []
        _enqueue(c, topic, "after")
        c.commit()
    ctx.wait_all_published(len(want), 60, relay)
    got = {r.key: r for r in ctx.kafka.consume_all(topic, len(want), 60)}
    assert sorted(got) == sorted(want)
    for key, headers in want.items():
        assert _trace_headers(got[key]) == headers, key
    assert got["set-local-2"].headers["type"] == "OrderPlaced"


def _rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_cloudevents_binary_mode_end_to_end(ctx):
    """message.cloudevents: ce_specversion, ce_id (the event id), ce_source, ce_type (the
    row's type header, else its topic), ce_time (created_at, RFC 3339, the same instant in
    both modes), content-type; the value is the payload unchanged."""
    topic = ctx.topic()
    relay = ctx.relay({"message": {"cloudevents": {"enabled": True, "source": "/orders-service"}}})
    relay.start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    with ctx.connect() as c:
        typed = _enqueue(c, topic, "typed", {"type": "com.example.OrderPlaced"})
        untyped = _enqueue(c, topic, "untyped")
        raw = c.execute("SELECT outbox.enqueue(%s::text, 'bytes', '\\x00ff'::bytea)::text",
                        (topic,)).fetchone()[0]
        created = dict(c.execute("SELECT event_id::text, created_at FROM outbox.events").fetchall())
    ctx.wait_all_published(3, 60, relay)
    got = {r.key: r for r in ctx.kafka.consume_all(topic, 3, 60)}
    ce = lambda r: [(n, v) for n, v in r.header_list if n.startswith("ce_") or n == "content-type"]
    t = got["typed"]
    assert ce(t)[:3] == [("ce_specversion", "1.0"), ("ce_id", typed), ("ce_source", "/orders-service")]
    assert ce(t)[3] == ("ce_type", "com.example.OrderPlaced")
    assert ce(t)[4][0] == "ce_time" and _rfc3339(ce(t)[4][1]) == created[typed]
    assert ce(t)[5] == ("content-type", "application/json")
    assert json.loads(t.value) == {"k": "typed"}
    assert dict(ce(got["untyped"]))["ce_type"] == topic
    assert dict(ce(got["untyped"]))["ce_id"] == untyped
    assert _rfc3339(dict(ce(got["untyped"]))["ce_time"]) == created[untyped]
    assert dict(ce(got["bytes"]))["content-type"] == "application/octet-stream"
    assert dict(ce(got["bytes"]))["ce_id"] == raw
    assert got["bytes"].value == b"\x00\xff"


def murmur2(data: bytes) -> int:
    """Kafka's Java Utils.murmur2, as an unsigned 32-bit value."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & ~3
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    """Java's default partitioner for a keyed record: toPositive(murmur2(key)) % partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_is_javas():
    """The test's murmur2 against values of Kafka's own Java tests (UtilsTest)."""
    signed = lambda v: v - (1 << 32) if v >= 1 << 31 else v
    assert signed(murmur2(b"21")) == -973932308
    assert signed(murmur2(b"foobar")) == -790332482
    assert signed(murmur2(b"a-little-bit-long-string")) == -985981536
    assert signed(murmur2(b"a-little-bit-longer-string")) == -1486304829
    assert signed(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8")) == -58897971
    assert signed(murmur2(b"abc")) == 479470107


@pytest.mark.parametrize("mode", ["polling"], indirect=True)
def test_debezium_compatible_output(ctx):
    """The options of docs/guide/coming-from-debezium.md at once: topic outbox.event.{topic},
    the event id in header `id`, key and value as the JsonConverter writes strings, and each
    key on the partition Java's producer (murmur2) gives its bytes, on a 6-partition topic."""
    row_topic = ctx.topic("order", create=False)
    kafka_topic = ctx.kafka.create_topic("outbox.event." + row_topic, 6)
    relay = ctx.relay({
        "message": {"topic_template": "outbox.event.{topic}", "id_header": True,
                    "json_string_key": True, "json_string_value": True},
        "kafka": {"properties": {"partitioner": "murmur2_random"}},
    }).start()
    keys = [f"order-{i}" for i in range(12)] + ["1", "Grüße", "a-little-bit-longer-string"]
    ids = {}
    with ctx.connect() as c:
        for k in keys:
            ids[k] = _enqueue(c, row_topic, k, {"type": "OrderCreated"})
    ctx.wait_all_published(len(keys), 60, relay)
    got = ctx.kafka.consume_all(kafka_topic, len(keys), 60)
    assert len(got) == len(keys)
    partitions = set()
    for r in got:
        key = json.loads(r.key)  # "order-7", with the quotes
        assert r.key == json.dumps(key, ensure_ascii=False)
        assert r.headers["id"] == r.headers["outbox-event-id"] == ids[key]
        # The value: a JSON string whose text is the jsonb payload, as Debezium sends it.
        assert json.loads(json.loads(r.value)) == {"k": key}
        assert r.partition == java_partition(r.key.encode("utf-8"), 6), key
        partitions.add(r.partition)
    assert len(partitions) > 1  # the keys spread: the comparison says something
