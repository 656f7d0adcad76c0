"""Bad input from the table: rows written straight into outbox.events (bypassing
outbox.enqueue, as the table owner), in both source modes. What the schema refuses is
asserted refused; every row it accepts but Kafka cannot take is dead-lettered with a reason
naming its cause, the relay never stops, and the good rows written around them (same key
and other keys) are all published, in order, exactly once.

Already covered elsewhere, not repeated: a topic with a space and "!", a number as header
value and a payload above the producer's message.max.bytes (test_cli_and_hint.py, polling);
a row too large for its topic's max.message.bytes inside a batch (test_blame.py).
"""

from __future__ import annotations

import json

import psycopg
import pytest

from harness import audit, enqueue, wait_until
from harness.checks import assert_no_loss


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


def _insert(c, topic, key, payload: bytes, headers_sql: str, params=()):
    """A direct INSERT; headers given as SQL (so non-objects and huge values can be written)."""
    return c.execute(f"INSERT INTO outbox.events (topic, key, payload, headers) VALUES (%s, %s, %s, {headers_sql}) "
                     "RETURNING id", (topic, key, payload, *params)).fetchone()[0]


def test_what_the_schema_refuses(ctx):
    topic = ctx.topic(partitions=1)
    with ctx.connect() as c:
        for sql, params, error in [
            ("INSERT INTO outbox.events (topic, payload) VALUES ('', 'x')", (), psycopg.errors.CheckViolation),
            ("INSERT INTO outbox.events (topic, payload) VALUES (NULL, 'x')", (), psycopg.errors.NotNullViolation),
            ("INSERT INTO outbox.events (topic, headers) VALUES (%s, NULL)", (topic,),
             psycopg.errors.NotNullViolation),
            # key and headers are text and jsonb: invalid UTF-8 cannot be stored at all
            ("INSERT INTO outbox.events (topic, key) VALUES (%s, convert_from('\\xc328'::bytea, 'UTF8'))",
             (topic,), psycopg.errors.CharacterNotInRepertoire),
            ("INSERT INTO outbox.events (topic, headers) VALUES "
             "(%s, jsonb_build_object('h', convert_from('\\xff'::bytea, 'UTF8')))", (topic,),
             psycopg.errors.CharacterNotInRepertoire),
            ("INSERT INTO outbox.events (topic, headers) VALUES (%s, '{\"h\": \"\\u0000\"}')", (topic,),
             psycopg.errors.UntranslatableCharacter),
        ]:  # fmt: skip
            with pytest.raises(error):
                c.execute(sql, params)
    assert ctx.counts() == (0, 0)


def test_bad_rows_are_dead_lettered_with_their_cause_and_the_good_ones_flow_in_order(ctx):
    topic = ctx.topic(partitions=3)
    other = ctx.topic("other", partitions=2)
    # The producer's message.max.bytes is left at its default (1 MB, as the broker's): the
    # producer refuses the 1.5 MB payload and the 2 MB headers before they reach the broker.
    # (Raised above the broker's: test_blame.py.)
    relay = ctx.relay({"relay": {"max_attempts": 2}}).start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    huge_object = {f"h{i}": "v" * 1000 for i in range(2000)}  # 2 MB of string headers
    bad = [  # (topic, headers SQL, its params, payload, what last_error must say)
        ("t" * 250, "'{}'", (), b"x", "invalid Kafka topic name"),
        ("orders/eu", "'{}'", (), b"x", "invalid Kafka topic name"),
        ("zamówienia", "'{}'", (), b"x", "invalid Kafka topic name"),
        ("..", "'{}'", (), b"x", "invalid Kafka topic name"),
        (topic, "'[\"a\", \"b\"]'", (), b"x", "headers must be a JSON object"),
        (topic, "'\"text\"'", (), b"x", "headers must be a JSON object"),
        (topic, "'null'", (), b"x", "headers must be a JSON object"),
        (topic, "'{\"h\": {\"nested\": \"x\"}}'", (), b"x", 'header "h" must be a string'),
        (topic, "'{\"h\": null}'", (), b"x", 'header "h" must be a string'),
        (topic, "'{\"h\": true}'", (), b"x", 'header "h" must be a string'),
        (topic, "'{\"outbox-id\": \"1\"}'", (), b"x", 'header "outbox-id" is reserved'),
        (topic, "%s::jsonb", (json.dumps(["v" * 1000] * 2000),), b"x", "headers must be a JSON object"),
        (topic, "%s::jsonb", (json.dumps(huge_object),), b"x", "too large"),
        (topic, "'{}'", (), bytes(1_500_000), "too large"),
    ]  # fmt: skip
    bad_ids = {}
    good = 0
    with ctx.connect() as c:
        for i, (t, headers_sql, params, payload, cause) in enumerate(bad):
            for _ in range(3):  # good rows around each bad one: its key, another key, another topic
                enqueue(c, topic, "k", f"k{good}".encode(), {"n": str(good)})
                enqueue(c, topic, f"k{i % 3}", f"o{good}".encode())
                enqueue(c, other, "k", f"t{good}".encode())
                good += 1
            bad_ids[_insert(c, t, "k", payload, headers_sql, params)] = cause
        for _ in range(3):
            enqueue(c, topic, "k", f"k{good}".encode(), {"n": str(good)})
            good += 1
    total = len(bad) * 9 + 3
    wait_until(lambda: ctx._query("SELECT count(*) FROM outbox.events "
                                  "WHERE published_at IS NULL AND dead_lettered_at IS NULL")[0][0] == 0,
               120, 0.1, "every row published or dead-lettered", lambda: relay.assert_running())
    relay.assert_running("after the bad rows")

    dead = {r[0]: r[1] for r in ctx._query("SELECT id, last_error FROM outbox.events "
                                           "WHERE dead_lettered_at IS NOT NULL")}
    assert set(dead) == set(bad_ids), (dead, bad_ids)
    for row_id, cause in bad_ids.items():
        assert cause.lower() in (dead[row_id] or "").lower(), (row_id, cause, dead[row_id])
        assert len(dead[row_id]) < 1000, f"row {row_id}: a {len(dead[row_id])}-byte reason"

    # Checked above; out of the way of the audit, which reads each row's headers as an object.
    ctx._query("DELETE FROM outbox.events WHERE id = ANY(%s) RETURNING id", (list(bad_ids),))
    rows = ctx.rows()
    assert len(rows) == total
    records = ctx.kafka.consume_all(topic, total - len(bad) * 3, timeout_s=60)
    records += ctx.kafka.consume_all(other, len(bad) * 3, timeout_s=60)
    rep = audit(rows, records)
    assert rep.records == total
    assert_no_loss(rep, relay, allow_duplicates=False)
    same_key = [int(r.headers["n"]) for r in records if r.topic == topic and r.key == "k"]
    assert same_key == list(range(good)), same_key  # none of the bad rows' key lost its order
    assert relay.terminate() == 0, relay.log_tail()
    ctx.note(f"{len(bad)} bad rows dead-lettered among {total} good ones ({ctx.mode})")
