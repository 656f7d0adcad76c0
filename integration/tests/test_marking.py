"""Marking rows published: a mark that fails the same way every time (a trigger, a revoked
grant, statement_timeout) used to loop publish, fail, publish, each loop a full batch of
duplicates. The relay now keeps the outcome and retries only the mark.

A row gone between Kafka's acknowledgement and its mark (deleted, or the database went back
in time) used to wedge the relay: the mark matched fewer rows than given and was retried
forever. The relay now marks what exists, reports the gone rows (log, metric, `audit`) and
goes on. These tests freeze the relay right after Kafka acknowledged a message (crash point
`after_delivery`, SIGSTOP), change the table, and let it go on (SIGCONT): no sleeps."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from harness import audit, enqueue, wait_until
from harness.checks import assert_no_loss, explain
from harness.faults import crash_points_compiled


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


@pytest.fixture
def crash_build(relay_bin):
    if not crash_points_compiled(relay_bin):
        pytest.fail(f"{relay_bin} was built without -DOUTBOX_CRASH_POINTS=ON "
                    "(integration/test-all.sh turns it on)")
    return relay_bin


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _metric(relay, series: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port()}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def _frozen_after_first_ack(ctx, topic: str):
    """A relay that stops itself (SIGSTOP) right after Kafka acknowledged the first row's
    message, before its mark; returns (relay, id, event_id) of that row once it is frozen
    and its message is in Kafka."""
    overrides = {"relay": {"backoff_initial_ms": 20, "backoff_max_ms": 100}}
    if ctx.mode == "replication":
        overrides["source"] = {"replication": {"status_interval_ms": 200}}
    relay = ctx.relay(overrides)
    relay.env["OUTBOX_RELAY_CRASH_AT"] = "after_delivery:1:stop"
    relay.start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay, timeout_s=60)
    with ctx.connect() as c:
        event_id = enqueue(c, topic, "k", b"first")
        row_id = c.execute("SELECT id FROM outbox.events WHERE event_id = %s::uuid",
                           (event_id,)).fetchone()[0]
    wait_until(lambda: _state(relay.pid) == "T", 60, 0.02, "the relay frozen after Kafka's answer",
               lambda: relay.assert_running("before freezing"))
    assert "after_delivery reached (hit 1): SIGSTOP" in relay.log_text(), relay.log_tail()
    records = ctx.kafka.consume_all(topic, 1, timeout_s=30)
    assert [r.headers.get("outbox-event-id") for r in records] == [event_id]
    assert ctx.marked() == 0
    return relay, row_id, event_id


def test_a_row_deleted_before_its_mark_is_reported_and_the_relay_goes_on(ctx, crash_build):
    """Regression: a row deleted between Kafka's acknowledgement and its mark wedged the relay
    (the mark matched 0 of 1 rows, was retried forever, nothing else was read)."""
    topic = ctx.topic(partitions=1)
    relay, row_id, event_id = _frozen_after_first_ack(ctx, topic)
    with ctx.connect() as c:
        c.execute("DELETE FROM outbox.events WHERE id = %s", (row_id,))
    relay.signal(signal.SIGCONT)
    lsn = ctx.wal_lsn()  # past the gone row's transaction
    with ctx.connect() as c:
        later = [enqueue(c, topic, "k", f"later-{i}".encode()) for i in range(3)]
    ctx.wait_all_published(3, 60, relay)  # the later rows are published: nothing is wedged
    ctx.check_slot_caught_up(lsn, relay)  # replication: the gone row is resolved too
    records = ctx.kafka.consume_all(topic, 4, timeout_s=30)
    assert [r.headers.get("outbox-event-id") for r in records] == [event_id] + later
    log = relay.log_text()
    assert f"row {row_id} (event {event_id}, topic {topic}) vanished" in log, relay.log_tail()
    assert "recorded in outbox.vanished" in log, relay.log_tail()
    assert _metric(relay, "outbox_relay_rows_vanished_total") == 1
    assert ctx._query("SELECT id, event_id::text, topic, acknowledged, reused_by FROM outbox.vanished") \
        == [(row_id, event_id, topic, True, None)]
    r = relay.command("audit", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["vanished"] == 1 and report["vanished_messages"] == 1, report
    assert report["unknown"] == 0 and report["lost"] == 0, report
    assert report["vanished_examples"][0]["id"] == row_id, report
    text = relay.command("audit").stdout
    assert f"vanished: row {row_id} (event {event_id}, topic {topic}) acknowledged by Kafka" in text, text
    relay.assert_running()


def test_an_id_used_again_before_the_mark_is_not_marked_for_the_old_event(ctx, crash_build):
    """Regression: the mark matched by id alone, so after the id sequence rewound (a restore, a
    failover) a new row with the acknowledged row's id was marked published and never sent."""
    topic = ctx.topic(partitions=1)
    relay, row_id, event_id = _frozen_after_first_ack(ctx, topic)
    with ctx.connect() as c:  # the database went back in time: the id names another event
        c.execute("DELETE FROM outbox.events WHERE id = %s", (row_id,))
        new_event = c.execute(
            "INSERT INTO outbox.events (id, topic, key, payload) OVERRIDING SYSTEM VALUE "
            "VALUES (%s, %s, 'k', 'again') RETURNING event_id::text", (row_id, topic)).fetchone()[0]
    relay.signal(signal.SIGCONT)
    ctx.wait_all_published(1, 60, relay)
    records = ctx.kafka.consume_all(topic, 2, timeout_s=30)
    assert [(r.headers.get("outbox-event-id"), r.headers.get("outbox-id")) for r in records] == \
        [(event_id, str(row_id)), (new_event, str(row_id))], "the new event must be sent itself"
    assert f"the row with this id is now event {new_event}" in relay.log_text(), relay.log_tail()
    assert ctx._query("SELECT id, event_id::text, reused_by::text FROM outbox.vanished") == \
        [(row_id, event_id, new_event)]
    assert _metric(relay, "outbox_relay_rows_vanished_total") == 1
    relay.assert_running()


def test_a_mark_that_keeps_failing_sends_nothing_twice(ctx):
    """Regression: a mark that failed the same way every time (a trigger, a revoked grant,
    statement_timeout) made the relay publish, fail and publish again, a full batch of
    duplicates each loop."""
    topic = ctx.topic()
    total = 60
    with ctx.connect() as c:
        c.execute("CREATE FUNCTION public.refuse_marks() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE EXCEPTION 'marks refused by a trigger'; END $$")
        c.execute("CREATE TRIGGER refuse_marks BEFORE UPDATE ON outbox.events "
                  "FOR EACH ROW EXECUTE FUNCTION public.refuse_marks()")
    relay = ctx.relay({"relay": {"backoff_initial_ms": 20, "backoff_max_ms": 100}}).start()
    with ctx.connect() as c:
        for i in range(total):
            enqueue(c, topic, f"k{i % 6}", str(i).encode())
    failures = lambda: relay.log_text().count("marks refused by a trigger")  # noqa: E731
    wait_until(lambda: failures() >= 8, 60, 0.05, "the mark failing again and again")
    assert ctx.marked() == 0
    with ctx.connect() as c:
        c.execute("DROP TRIGGER refuse_marks ON outbox.events")
    ctx.wait_all_published(total, 60, relay)
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.records == total, f"{rep.records} records for {total} rows after {failures()} " \
        "failed marks: a batch was sent again for each\n" + explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    relay.assert_running()
    ctx.note(f"{failures()} failed marks, {rep.records} records for {total} rows")


def test_without_schema_0008_a_gone_row_is_logged_and_counted_and_the_relay_goes_on(ctx, crash_build):
    """A relay upgraded before `migrate` added outbox.vanished: it says so, and a gone row is
    still only logged and counted, never a failed mark."""
    with ctx.connect() as c:
        c.execute("DROP TABLE outbox.vanished")
    topic = ctx.topic(partitions=1)
    relay, row_id, event_id = _frozen_after_first_ack(ctx, topic)
    assert "outbox.vanished is missing or not writable" in relay.log_text(), relay.log_tail()
    with ctx.connect() as c:
        c.execute("DELETE FROM outbox.events WHERE id = %s", (row_id,))
    relay.signal(signal.SIGCONT)
    with ctx.connect() as c:
        enqueue(c, topic, "k", b"later")
    ctx.wait_all_published(1, 60, relay)
    log = relay.log_text()
    assert f"row {row_id} (event {event_id}, topic {topic}) vanished" in log, relay.log_tail()
    assert "not recorded for `audit` (no table outbox.vanished" in log, relay.log_tail()
    assert _metric(relay, "outbox_relay_rows_vanished_total") == 1
    relay.assert_running()


@pytest.mark.parametrize("mode", ["polling"], indirect=True)
def test_marks_on_a_large_table_cost_work_in_proportion_to_their_rows(ctx):
    """Regression: the mark's UPDATE named its ids twice (`id = ANY($1)` and a join to
    `unnest($1, $2)`). After five executions PostgreSQL keeps the prepared statement's
    generic plan, and on a table of 1,000,000 rows that plan scanned the table by the array
    and rescanned the unnest for every row: batch_size² comparisons a mark (87 ms for 1,100
    rows, 80 of the 90 PostgreSQL CPU seconds of a 1,000,000-row drain). Here the table holds
    1,000,000 published rows and 5,000 pending ones, marked in batches of 500; the plans of
    the relay's marks (auto_explain, in this database only) must remove at most as many rows
    in joins as they mark."""
    import re

    batch, total, published = 500, 5000, 1_000_000
    topic = ctx.topic()
    with ctx.connect() as c:
        c.execute("INSERT INTO outbox.events (topic, published_at) "
                  "SELECT 'padding', now() FROM generate_series(1, %s)", (published,))
        for k, v in {"session_preload_libraries": "auto_explain", "auto_explain.log_min_duration": "0",
                     "auto_explain.log_analyze": "on"}.items():
            c.execute(f'ALTER DATABASE "{ctx.db}" SET {k} = {v}')
        c.execute("INSERT INTO outbox.events (topic, key, payload) SELECT %s, 'k' || (g %% 50), "
                  "convert_to(g::text, 'UTF8') FROM generate_series(1, %s) g", (topic, total))
    log_from = len(ctx.pg.log_text())
    relay = ctx.relay({"source": {"polling": {"batch_size": batch},
                                  "pipeline": {"max_in_flight_rows": 2 * batch}}}).start()
    ctx.wait_all_published(published + total, 120, relay)
    marks = [entry for entry in ctx.pg.log_text()[log_from:].split("LOG:  duration:")
             if "UPDATE outbox.events e SET published_at" in entry]
    assert len(marks) > 5, f"{len(marks)} plans of marks in PostgreSQL's log (auto_explain): " \
        "too few for the generic plan"
    for plan in marks:
        updated = re.search(r"Update on events e .*?actual time=\S+ rows=(\d+)", plan)
        assert updated, plan
        rows = int(updated.group(1))
        removed = sum(int(n) for n in re.findall(r"Rows Removed by Join Filter: (\d+)", plan))
        assert removed <= rows, f"a mark of {rows} rows removed {removed} in joins:\n{plan}"
