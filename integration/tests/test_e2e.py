"""End-to-end tests of the relay against a real PostgreSQL and Kafka, in both
source modes: every test taking `ctx` runs once with `source.mode: polling` and
once with `source.mode: replication` (the `mode` fixture below).

Each test has its own database (migrated by `outbox-relay migrate`) and topics;
see conftest.py. Rows are the truth: the audit compares outbox.events with
everything read back from Kafka. In replication mode the tests also check that
the slot was confirmed past the last transaction once every row is marked.
Replication-only behaviour (slot resume, WAL retention, invalidated or busy
slots...) is in test_replication.py.
"""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from harness import audit, enqueue, hold, setup_keys, wait_until
from harness.checks import KEYS_100, assert_delivered, assert_no_loss, check_confirm_invariant, explain, start_load


@pytest.fixture(params=["polling", "replication"])
def mode(request) -> str:
    """Every ctx test of this module runs in both source modes."""
    return request.param


def check_slot_at_stop(ctx, writers, what: str) -> None:
    """Replication mode, relay stopped: once its walsender let go of the slot, the
    confirmed position is final and must not be past any unmarked row."""
    if ctx.mode != "replication":
        return
    wait_until(lambda: (s := ctx.slot()) and not s.active, 30, 0.05, f"slot released {what}")
    check_confirm_invariant(ctx, writers, what)


# ----------------------------------------------------------------------------
def test_concurrent_writers_10k_events_exactly_once_in_key_order(ctx):
    total = 10_000
    topic, writers = start_load(ctx, total, threads=8)
    relay = ctx.relay().start()
    t0 = time.monotonic()
    writers.start()
    writers.join(180)
    t_written = time.monotonic() - t0
    relay.assert_running("during the load")
    ctx.wait_all_published(total, 120, relay)
    t_marked = time.monotonic() - t0
    records = ctx.kafka.consume_all(topic, total, timeout_s=90)
    rep = audit(ctx.rows(), records)
    assert rep.rows == total
    assert rep.records == total, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    # every record carries the row's own headers (checked by the audit) - spot check one
    assert records[0].headers.get("type") == "TestEvent", records[0].headers
    ctx.check_slot_caught_up(writers.max_pre_commit_lsn, relay)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"{total} events by {writers.transactions} txs from 8 writers in {t_written:.1f}s; "
        f"all marked after {t_marked:.1f}s ({total / t_marked:.0f} events/s end to end)"
    )


# ----------------------------------------------------------------------------
def test_late_commit_is_published(ctx):
    """A (lower id) commits after B (higher id) was already published: A must not be skipped."""
    topic = ctx.topic()
    relay = ctx.relay().start()
    if ctx.mode == "replication":
        # creating the slot waits for open transactions: A must open after that
        ctx.wait_streaming(relay)
    a = ctx.connect(autocommit=False)
    b = ctx.connect(autocommit=False)

    eid_a = enqueue(a, topic, "key-a", b"event A", {"type": "Late"})
    id_a = a.execute("SELECT id FROM outbox.events WHERE event_id = %s", (eid_a,)).fetchone()[0]
    try:
        eid_b = enqueue(b, topic, "key-b", b"event B", {"type": "OnTime"})
    except psycopg.errors.LockNotAvailable as e:
        pytest.fail(
            "enqueue in transaction B blocked behind the still-open transaction A (a row lock taken by "
            f"enqueue, e.g. outbox.relay_wakeup in hint_relay()): {e}"
        )
    id_b = b.execute("SELECT id FROM outbox.events WHERE event_id = %s", (eid_b,)).fetchone()[0]
    b.commit()
    assert id_b > id_a, (id_a, id_b)

    reader = ctx.reader(topic)

    def has(eid):
        return lambda recs: any(r.event_id == eid for r in recs)

    assert reader.wait_for(has(eid_b), 30), "B (committed) not published while A is open:\n" + relay.log_tail()
    assert not has(eid_a)(reader.records), "A published before it committed?!"
    relay.assert_running()
    before_commit_a = ctx.wal_lsn()  # below the end of A's commit
    a.commit()
    assert reader.wait_for(has(eid_a), 60), f"late-committed A (id {id_a}) never published:\n" + relay.log_tail()
    ctx.wait_all_published(2, 30, relay)
    records = reader.read(2, timeout_s=10)
    rep = audit(ctx.rows(), records)
    assert_no_loss(rep, relay, allow_duplicates=False)
    ctx.check_slot_caught_up(before_commit_a, relay)
    assert relay.terminate(60) == 0, relay.log_tail()


def _recovered(ctx, relay, topic: str, writers, total: int, publish_timeout_s: float):
    """After a fault: every row published in time, none lost (duplicates allowed), the slot
    caught up with the writers (replication mode), the relay stops cleanly. The audit."""
    ctx.wait_all_published(total, publish_timeout_s, relay)
    rep = assert_delivered(ctx, topic, total, relay, allow_duplicates=True)
    ctx.check_slot_caught_up(writers.max_pre_commit_lsn, relay)
    assert relay.terminate(60) == 0, relay.log_tail()
    return rep


# ----------------------------------------------------------------------------
def test_sigkill_mid_stream_then_restart_loses_nothing(ctx):
    total = 5_000
    topic, writers = start_load(ctx, total, keys=KEYS_100[:50], threads=4)
    relay = ctx.relay({"source": {"polling": {"batch_size": 100}}}).start()
    writers.start()
    ctx.wait_marked_at_least(1000, 60, relay)
    relay.kill()
    check_slot_at_stop(ctx, writers, "after the SIGKILL")
    rows_at_kill, marked_at_kill = ctx.counts()
    assert marked_at_kill < total, (
        f"inconclusive: all {total} rows were marked before the SIGKILL landed (writers too slow?)"
    )
    writers.join(120)
    relay.start()  # same config, same log file
    rep = _recovered(ctx, relay, topic, writers, total, 120)
    ctx.note(
        f"SIGKILL at {marked_at_kill}/{rows_at_kill} rows marked ({total} in all): "
        f"after restart 0 lost, {rep.duplicate_count} duplicates"
    )


# ----------------------------------------------------------------------------
@pytest.mark.chaos
def test_postgres_restart_under_load(ctx):
    total = 6_000
    topic, writers = start_load(ctx, total, threads=4, retry=True)
    relay = ctx.relay().start()
    writers.start()
    ctx.wait_marked_at_least(1500, 60, relay)
    writers.pause()  # services would fail or retry while the database is down
    t0 = time.monotonic()
    ctx.pg.stop()  # fast shutdown: every connection, the relay's too, is cut
    hold(3.0, check=lambda: relay.assert_running("while PostgreSQL was down"))
    ctx.pg.start()
    down_s = time.monotonic() - t0
    writers.resume()
    writers.join(180)
    relay.assert_running("after PostgreSQL came back")
    rep = _recovered(ctx, relay, topic, writers, total, 120)
    ctx.note(f"PostgreSQL down {down_s:.1f}s under load: 0 lost, {rep.duplicate_count} duplicates")


@pytest.mark.chaos
def test_kafka_restart_under_load(ctx):
    total = 6_000
    topic, writers = start_load(ctx, total, threads=4)
    relay = ctx.relay().start()
    writers.start()
    ctx.wait_marked_at_least(1500, 60, relay)
    t0 = time.monotonic()
    ctx.kafka.stop()  # writers go on: the outbox absorbs the outage
    alive = lambda: relay.assert_running("while Kafka was down")  # noqa: E731
    hold(2.0, check=alive)  # acks that were in flight at the stop are marked by now
    marked_early = ctx.marked()
    hold(8.0, check=alive)
    marked_late = ctx.marked()
    ctx.kafka.start()
    down_s = time.monotonic() - t0
    # nothing can be acknowledged by a broker that is down
    assert marked_late == marked_early, (
        f"rows marked published while Kafka was down: {marked_early} -> {marked_late}\n" + relay.log_tail()
    )
    writers.join(180)
    rep = _recovered(ctx, relay, topic, writers, total, 180)
    ctx.note(
        f"Kafka down {down_s:.1f}s under load ({writers.committed} events written meanwhile): "
        f"0 lost, {rep.duplicate_count} duplicates"
    )


# ----------------------------------------------------------------------------
_ABANDON_NUM = re.compile(r"abandon\w*\W{0,3}(\d+)|(\d+)\s+(?:\w+\s+){0,2}abandon", re.I)


def abandoned_in_log(text: str) -> tuple[int, list[str]]:
    """(largest count the relay logs as abandoned, the lines that mention it)."""
    lines = [ln for ln in text.splitlines() if "abandon" in ln.lower()]
    n = 0
    for ln in lines:
        for m in _ABANDON_NUM.finditer(ln):
            n = max(n, int(m.group(1) or m.group(2)))
    return n, lines


def test_sigterm_mid_stream_exits_0_and_marks_what_it_published(ctx):
    total = 5_000
    topic, writers = start_load(ctx, total, threads=4)
    relay = ctx.relay({"source": {"polling": {"batch_size": 200}}}).start()
    writers.start()
    ctx.wait_marked_at_least(1000, 60, relay)
    t0 = time.monotonic()
    rc = relay.terminate(60)
    stop_s = time.monotonic() - t0
    writers.stop()
    writers.join(60)
    assert rc == 0, f"exit code {rc} on SIGTERM:\n{relay.log_tail()}"
    check_slot_at_stop(ctx, writers, "after the SIGTERM")

    rows = ctx.rows()
    marked = sum(1 for r in rows if r.published)
    records = ctx.kafka.consume_all(topic, marked, timeout_s=60, idle_s=2.0)
    rep = audit(rows, records)
    abandoned, lines = abandoned_in_log(relay.log_text())
    marked_not_in_kafka = [r for r in rep.lost if r.published]
    assert not marked_not_in_kafka, "rows marked but not in Kafka: " + explain(rep, relay)
    assert len(rep.unmarked_delivered) <= abandoned, (
        f"{len(rep.unmarked_delivered)} events are in Kafka but their rows are unmarked "
        f"(relay logged abandoned={abandoned}: {lines}); e.g. ids {[r.id for r in rep.unmarked_delivered[:10]]}\n"
        + explain(rep, relay)
    )
    assert abandoned == 0, f"relay abandoned deliveries in a normal shutdown: {lines}"
    assert not rep.duplicates, explain(rep, relay)
    assert not rep.missing_headers and not rep.mismatches and not rep.unknown, explain(rep, relay)
    assert not rep.order_violations, explain(rep, relay)
    ctx.note(f"SIGTERM at >=1000 marked: exit 0 after {stop_s:.2f}s, {marked}/{len(rows)} rows marked, all in Kafka")


# ----------------------------------------------------------------------------
BAD_CONFIG = """\
postgres:
  dsnn: "host=127.0.0.1 port=1 dbname=nothing user=postgres"
kafka:
  bootstrap_servers: "127.0.0.1:1"
source:
  mode: polling
  polling:
    batch_size: -5
"""


def _names_line(stderr: str, key: str, line: int) -> bool:
    """Some stderr line names `key` and line number `line` ("line 8" or "file:8:")."""
    pat = re.compile(rf"(?i)\bline\W{{0,2}}{line}\b|:{line}(?::|\b)")
    return any(key in ln and pat.search(ln.replace(key, "")) for ln in stderr.splitlines())


@pytest.mark.parametrize("subcommand", ["run", "check", "migrate"])
def test_bad_config_exits_2_naming_keys_and_lines(relay_bin, tmp_path, subcommand):
    from harness import Relay

    relay = Relay(BAD_CONFIG, tmp_path, binary=relay_bin)
    r = relay.command(subcommand, timeout_s=30)
    out = f"exit {r.returncode}\nstderr:\n{r.stderr}\nstdout:\n{r.stdout}"
    assert r.returncode == 2, out
    assert "postgres.dsnn" in r.stderr, out
    assert "source.polling.batch_size" in r.stderr, out
    assert _names_line(r.stderr, "postgres.dsnn", 2), "line 2 not named for postgres.dsnn:\n" + out
    assert _names_line(r.stderr, "source.polling.batch_size", 8), "line 8 not named for batch_size:\n" + out
