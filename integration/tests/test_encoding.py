"""Text encoding between PostgreSQL and the relay (found by trying the relay as a user would).

The relay took keys and headers in the session's client encoding: libpq's default is the
database's encoding, and a dsn's `client_encoding` or the pod's PGCLIENTENCODING changed it.
- In a database whose encoding is not UTF-8 (LATIN1, legal in PostgreSQL), every row with a
  non-ASCII header value was dead-lettered ("headers must be a JSON object of strings") and
  non-ASCII keys reached Kafka as Latin-1 bytes (payloads written by enqueue were UTF-8).
- With `client_encoding=LATIN1` in the dsn of a UTF-8 database, one row whose key has a
  character LATIN1 lacks made every read fail: nothing at all was published, forever.
The relay now always asks for UTF-8 (the server converts), in both source modes.
"""

from __future__ import annotations

import json

import pytest

from harness import drop_database_slots, wait_until


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


@pytest.fixture
def latin1_db(ctx):
    """A LATIN1 database beside the test's own, migrated by `outbox-relay migrate`."""
    name = ctx.db + "_latin1"
    with ctx.pg.connect("postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" ENCODING \'LATIN1\' LC_COLLATE \'C\' LC_CTYPE \'C\' '
                  "TEMPLATE template0")
    dsn = ctx.pg.dsn_for(name)
    try:
        ctx.relay({"postgres": {"dsn": dsn}}, name="migrate-latin1").migrate()
        yield name, dsn
    finally:
        for r in ctx._relays:  # the relays of this database first, then its slots
            r.stop_quietly()
        drop_database_slots(ctx.pg, name)
        ctx.pg.drop_database(name)


def _state(ctx, db):
    with ctx.pg.connect(db, autocommit=True, options="-c client_encoding=UTF8") as c:
        return c.execute(
            "SELECT count(*), count(published_at), count(dead_lettered_at), "
            "string_agg(last_error, '; ') FROM outbox.events").fetchone()


def test_non_ascii_keys_and_headers_in_a_latin1_database_reach_kafka_as_utf8(ctx, latin1_db):
    """Regression: in a LATIN1 database every row with a non-ASCII header value was
    dead-lettered and non-ASCII keys reached Kafka as Latin-1 bytes."""
    db, dsn = latin1_db
    topic = ctx.topic()
    rows = [("clé-ü", {"who": "Zoë"}), ("plain", {"who": "ascii"}), ("Grüße", {})]
    with ctx.pg.connect(db, autocommit=True, options="-c client_encoding=UTF8") as c:
        for key, headers in rows:
            c.execute("SELECT outbox.enqueue(%s::text, %s::text, %s::jsonb, %s::jsonb)",
                      (topic, key, json.dumps({"name": "Müller"}), json.dumps(headers)))
    relay = ctx.relay({"postgres": {"dsn": dsn}}).start()
    wait_until(lambda: _state(ctx, db)[1] + _state(ctx, db)[2] == len(rows), 60, 0.1,
               "every row published or dead-lettered", lambda: relay.assert_running())
    total, published, dead, errors = _state(ctx, db)
    assert (published, dead) == (len(rows), 0), f"dead-lettered: {errors}\n{relay.log_tail()}"
    got = ctx.kafka.consume_all(topic, len(rows), 60)
    # Record decodes key and headers as UTF-8 with replacement: Latin-1 bytes would not match.
    assert sorted(r.key for r in got) == sorted(k for k, _ in rows)
    assert {r.key: r.headers.get("who") for r in got} == {"clé-ü": "Zoë", "plain": "ascii", "Grüße": None}
    assert all(json.loads(r.value) == {"name": "Müller"} for r in got)


def test_a_dsn_client_encoding_never_stalls_the_outbox(ctx):
    """Regression: one key LATIN1 cannot hold, with client_encoding=LATIN1 in the dsn, made
    every read fail and nothing was published; now the rows around it (and it) are."""
    topic = ctx.topic()
    keys = ["a", "日本", "b"]
    with ctx.connect() as c:
        for k in keys:
            c.execute("SELECT outbox.enqueue(%s::text, %s::text, '{}'::jsonb)", (topic, k))
    relay = ctx.relay({"postgres": {"dsn": ctx.dsn + " client_encoding=LATIN1"}}).start()
    ctx.wait_all_published(len(keys), 60, relay)
    got = ctx.kafka.consume_all(topic, len(keys), 60)
    assert sorted(r.key for r in got) == sorted(keys)
