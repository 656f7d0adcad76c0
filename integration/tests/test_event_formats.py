"""Event formats consumers expect: W3C trace context carried from the service's transaction
(schema 0012). About 10 s.
"""

from __future__ import annotations

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
