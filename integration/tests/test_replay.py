"""`outbox-relay replay`: dead-lettered rows published after a fix, in both modes, while a
relay runs. Clearing dead_lettered_at by UPDATE did nothing in replication mode (the
publication carries inserts only); replay re-inserts the row instead."""

from __future__ import annotations

import pytest

from harness import enqueue, wait_until


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


def _dead(ctx):
    return ctx._query("SELECT id, event_id::text, topic FROM outbox.events "
                      "WHERE dead_lettered_at IS NOT NULL ORDER BY id")


def test_replay_publishes_fixed_rows_with_their_event_id_while_the_relay_runs(ctx):
    topic, other = ctx.topic(), ctx.topic("other")
    relay = ctx.relay().start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    with ctx.connect() as c:
        for t in (topic, topic, other):  # headers that are not strings: dead-lettered
            c.execute("INSERT INTO outbox.events (topic, key, payload, headers) "
                      "VALUES (%s, 'k', 'fixed', '{\"n\": 1}')", (t,))
        enqueue(c, topic, "k", b"good")
    reader = ctx.reader([topic, other])
    assert reader.wait_for(lambda rs: len(rs) >= 1, 60), relay.log_tail()
    dead = wait_until(lambda: len(_dead(ctx)) == 3 and _dead(ctx), 30, 0.05, "3 rows dead-lettered")

    # The operator fixes the rows, then replays them by id and by topic.
    with ctx.connect() as c:
        c.execute("UPDATE outbox.events SET headers = '{\"n\": \"1\"}' WHERE dead_lettered_at IS NOT NULL")
    first = relay.command("replay", "--id", str(dead[0][0]))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"replayed {dead[0][0]} as " in first.stdout, first.stdout
    by_topic = relay.command("replay", "--topic", other)
    assert by_topic.returncode == 0 and "1 rows replayed" in by_topic.stdout, by_topic.stdout

    assert reader.wait_for(lambda rs: len(rs) >= 3, 60), relay.log_tail()
    event_ids = {r.headers.get("outbox-event-id") for r in reader.records}
    assert dead[0][1] in event_ids and dead[2][1] in event_ids, (dead, event_ids)
    assert dead[1][1] not in event_ids  # not asked for: still dead-lettered
    rows = ctx._query("SELECT replayed_from, published_at IS NOT NULL FROM outbox.events "
                      "WHERE replayed_from IS NOT NULL ORDER BY id")
    wait_until(lambda: all(p for _, p in ctx._query(
        "SELECT id, published_at IS NOT NULL FROM outbox.events WHERE replayed_from IS NOT NULL")),
        30, 0.05, "replayed rows marked published")
    assert [r[0] for r in rows] == [dead[0][0], dead[2][0]]

    rest = relay.command("replay", "--all-dead-lettered")
    assert rest.returncode == 0 and "1 rows replayed" in rest.stdout, rest.stdout
    assert reader.wait_for(lambda rs: len(rs) >= 4, 60), relay.log_tail()
    assert _dead(ctx) == []
    assert len(reader.records) == 4  # nothing published twice
    relay.assert_running()


def test_replay_of_a_row_that_is_not_dead_lettered_fails_and_changes_nothing(ctx):
    relay = ctx.relay()
    with ctx.connect() as c:
        enqueue(c, ctx.topic(), "k", b"pending")
    before = ctx._query("SELECT id, event_id FROM outbox.events")
    r = relay.command("replay", "--id", str(before[0][0]) + ",999999")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"not replayed {before[0][0]}" in r.stderr and "not replayed 999999" in r.stderr
    assert ctx._query("SELECT id, event_id FROM outbox.events") == before
    usage = relay.command("replay")
    assert usage.returncode == 2 and "exactly one of" in usage.stderr
