"""Tests of `source.mode: replication` only: the logical slot and the pgoutput stream.

What the shared end-to-end suite (test_e2e.py, both modes) does not cover: the
slot's confirmed position (resume after SIGKILL, never past an unacknowledged
event, advancing while the outbox is idle), memory on a huge transaction, the
drain/stream hand-over, many rows sharing one commit, a schema change mid-stream,
and the fatal cases (slot held by another process, slot invalidated).

LSN reasoning used below: a writer records the WAL insert position just before
its COMMIT (`pre`, below the commit's end) and just after it (`post`, at or
above it). A slot confirmed at or beyond `post` has passed that transaction, so
all its rows must be marked; a relay that confirmed everything it was sent is
confirmed at least to the largest `pre`.
"""

from __future__ import annotations

import io
import re
import signal
import time

import pytest

from harness import audit, enqueue, hold, lsn_int, lsn_text, wait_until
from harness.checks import KEYS_100, assert_delivered, assert_no_loss, check_confirm_invariant, explain, start_load


@pytest.fixture
def mode() -> str:
    return "replication"


def duplicates_only_in_flight(rep, unmarked_at_kill: set[str], window: int, relay) -> None:
    """After a SIGKILL: only events whose rows were not marked at the kill may come
    twice, and at most the in-flight window of them (source.pipeline.max_in_flight_rows:
    rows sent and not yet marked)."""
    redelivered_marked = [e for e in rep.duplicates if e not in unmarked_at_kill]
    assert not redelivered_marked, (
        f"{len(redelivered_marked)} events sent again although their rows were marked before the SIGKILL "
        f"(e.g. {redelivered_marked[:5]}): " + explain(rep, relay)
    )
    assert len(rep.duplicates) <= window, (
        f"{len(rep.duplicates)} events duplicated, more than the window ({window}) in flight at the kill: "
        + explain(rep, relay)
    )


# ----------------------------------------------------------------------------
def test_sigkill_restart_resumes_from_confirmed_lsn(ctx):
    total, batch = 8_000, 100
    topic, writers = start_load(ctx, total, keys=KEYS_100[:50], threads=4)
    window = 4 * batch
    relay = ctx.relay({"source": {"polling": {"batch_size": batch},
                                  "pipeline": {"max_in_flight_rows": window}}}).start()
    s0 = ctx.wait_streaming(relay)
    writers.start()
    ctx.wait_marked_at_least(2000, 60, relay)
    relay.kill()
    # the old walsender lets go of the slot; its confirmed position is final now
    s_kill = wait_until(lambda: (s := ctx.slot()) and not s.active and s, 30, 0.05, "slot released after SIGKILL")
    before = check_confirm_invariant(ctx, writers, "at the SIGKILL")
    rows_at_kill, marked_at_kill = ctx.counts()
    unmarked_at_kill = {r.event_id for r in ctx.rows() if not r.published}
    assert marked_at_kill < total, f"inconclusive: all {total} rows marked before the SIGKILL landed"
    assert before > (s0.confirmed_flush_lsn or 0), (
        f"the slot never advanced while {marked_at_kill} rows were marked before the kill: "
        f"{s0.describe()} -> {s_kill.describe()}\n{relay.log_tail()}"
    )

    relay.start()
    samples = []

    def probe():  # every sample after the restart: confirmed never goes back
        samples.append(check_confirm_invariant(ctx, writers, "after the restart"))
        total_now, marked_now = ctx.counts()
        return writers.done and total_now >= total and marked_now == total_now

    wait_until(probe, 180, 0.2, f"{total} rows marked after the restart", lambda: relay.assert_running())
    writers.join(30)
    s_end = ctx.wait_slot_confirmed(writers.max_pre_commit_lsn, 30, relay)
    samples.append(s_end.confirmed_flush_lsn)
    back = [x for x in samples if x < before]
    assert not back, (
        f"confirmed_flush_lsn went back below {lsn_text(before)} after the restart: "
        f"{[lsn_text(x) for x in back[:5]]}\n{relay.log_tail()}"
    )
    rep = assert_delivered(ctx, topic, total, relay, allow_duplicates=True)
    duplicates_only_in_flight(rep, unmarked_at_kill, window, relay)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"SIGKILL at {marked_at_kill}/{rows_at_kill} marked; confirmed_flush_lsn {lsn_text(s0.confirmed_flush_lsn)} "
        f"(streaming) -> {lsn_text(before)} (kill) -> {lsn_text(s_end.confirmed_flush_lsn)} (end), never back; "
        f"0 lost, {rep.duplicate_count} duplicates (all unmarked at the kill)"
    )


# ----------------------------------------------------------------------------
@pytest.mark.chaos
def test_kafka_down_30s_slot_never_passes_unacknowledged_events(ctx):
    total = 12_000
    topic, writers = start_load(ctx, total, threads=4)
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    writers.start()
    ctx.wait_marked_at_least(2000, 60, relay)
    committed_at_stop = writers.committed
    t0 = time.monotonic()
    ctx.kafka.stop()
    alive = lambda: relay.assert_running("while Kafka was down")  # noqa: E731
    hold(2.0, check=alive)  # acknowledgements in flight at the stop are marked by now
    marked_base = ctx.marked()
    confirmed_base = check_confirm_invariant(ctx, writers, "Kafka down")
    samples = 0
    deadline = t0 + 30.0
    while time.monotonic() < deadline:
        alive()
        confirmed = check_confirm_invariant(ctx, writers, "Kafka down")
        marked = ctx.marked()
        samples += 1
        assert marked == marked_base, f"rows marked while Kafka was down: {marked_base} -> {marked}"
        assert confirmed == confirmed_base, (
            f"confirmed_flush_lsn moved {lsn_text(confirmed_base)} -> {lsn_text(confirmed)} while Kafka was down "
            f"and no row got marked ({marked} marked)\n{relay.log_tail()}"
        )
        hold(0.5, check=alive)
    written_down = writers.committed - committed_at_stop
    pending_down = ctx.counts()
    ctx.kafka.start()
    down_s = time.monotonic() - t0
    assert committed_at_stop < total, "inconclusive: writers had finished before Kafka stopped"
    writers.join(180)
    ctx.wait_all_published(total, 240, relay)
    s_end = ctx.wait_slot_confirmed(writers.max_pre_commit_lsn, 30, relay)
    check_confirm_invariant(ctx, writers, "after Kafka came back")
    rep = assert_delivered(ctx, topic, total, relay, allow_duplicates=True)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"Kafka down {down_s:.1f}s, {written_down} events written meanwhile, (rows, marked) = {pending_down}; "
        f"{samples} samples: confirmed_flush_lsn held at {lsn_text(confirmed_base)}, then "
        f"{lsn_text(s_end.confirmed_flush_lsn)}; 0 lost, {rep.duplicate_count} duplicates"
    )


# ----------------------------------------------------------------------------
def test_idle_outbox_busy_other_table_slot_advances(ctx):
    relay = ctx.relay({"source": {"replication": {"heartbeat_interval_ms": 1000}}}).start()
    topic = ctx.topic()
    ctx.wait_streaming(relay)
    with ctx.connect(autocommit=False) as c:
        for i in range(10):
            enqueue(c, topic, f"k{i}", b"before the noise")
        c.commit()
    ctx.wait_all_published(10, 60, relay)
    c = ctx.connect()
    c.execute("CREATE TABLE public.noise (id int, pad text)")
    s0 = ctx.slot()
    # ~50 MB of WAL into a table the publication does not cover
    for part in range(5):
        c.execute(
            "INSERT INTO public.noise SELECT g, repeat(md5(g::text), 32) FROM generate_series(%s::int, %s::int) g",
            (part * 10_000 + 1, (part + 1) * 10_000),
        )
    s1 = ctx.slot()
    written = s1.insert_lsn - s0.insert_lsn
    assert written >= 50_000_000, f"inconclusive: only {written / 1e6:.1f} MB of WAL written"
    t0 = time.monotonic()
    # a running-xacts record after the writes lets the server move restart_lsn
    # (the background writer logs one every 15 s anyway)
    c.execute("CHECKPOINT")
    peak = max(s1.retained_bytes or 0, s0.retained_bytes or 0)

    def advanced():
        s = ctx.slot()
        advanced.last = s
        return (
            s.confirmed_flush_lsn is not None
            and s.confirmed_flush_lsn >= s1.insert_lsn
            and s.retained_bytes is not None
            and s.retained_bytes <= written // 4
            and s
        )

    advanced.last = None
    try:
        s2 = wait_until(advanced, 30, 0.2, "slot past the writes to the other table", lambda: relay.assert_running())
    except AssertionError as e:
        raise AssertionError(
            f"{e}\nbefore: {s0.describe()}\nafter the writes: {s1.describe()}\nlast: {advanced.last.describe()}\n"
            + relay.log_tail()
        ) from None
    took = time.monotonic() - t0
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"{written / 1e6:.1f} MB WAL to another table, outbox idle: retained WAL {s0.retained_bytes / 1e6:.1f} MB "
        f"-> {peak / 1e6:.1f} MB after the writes -> {s2.retained_bytes / 1e6:.2f} MB; confirmed_flush_lsn "
        f"{lsn_text(s0.confirmed_flush_lsn)} -> {lsn_text(s2.confirmed_flush_lsn)} (writes ended at "
        f"{lsn_text(s1.insert_lsn)}) {took:.1f}s after the writes (heartbeat 1 s)"
    )


# ----------------------------------------------------------------------------
BULK_SQL = """
INSERT INTO outbox.events (topic, key, payload, headers)
SELECT %(topic)s, 'key-' || lpad((g %% %(keys)s)::text, 3, '0'),
       convert_to(format('{"n":%%s,"pad":"%%s"}', g, repeat('p', %(pad)s)), 'UTF8'),
       jsonb_build_object('type', 'Bulk', 'n', g::text)
FROM generate_series(1, %(n)s) g
"""


def test_one_transaction_of_100k_rows_exactly_once_bounded_memory(ctx):
    n = 100_000
    topic = ctx.topic()
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    rss_idle = relay.proc_status_kb("VmRSS")
    pre = ctx.wal_lsn()
    t0 = time.monotonic()
    with ctx.connect() as c:  # one statement, one transaction, ~50 MB of payload
        c.execute(BULK_SQL, {"topic": topic, "keys": 100, "pad": 450, "n": n})
    t_insert = time.monotonic() - t0
    peak = 0

    def probe():
        nonlocal peak
        peak = max(peak, relay.proc_status_kb("VmHWM") or 0)
        total, marked = ctx.counts()
        return total == n and marked == n

    wait_until(probe, 300, 0.5, f"{n} rows marked", lambda: relay.assert_running("during the big transaction"))
    t_marked = time.monotonic() - t0
    peak = max(peak, relay.proc_status_kb("VmHWM") or 0)
    ctx.wait_slot_confirmed(pre, 30, relay)
    rep = assert_delivered(ctx, topic, n, relay, allow_duplicates=False, timeout_s=180)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"one transaction of {n} rows (~{n * 480 / 1e6:.0f} MB payload) inserted in {t_insert:.1f}s, all marked after "
        f"{t_marked:.1f}s; relay RSS idle {rss_idle / 1024:.1f} MB, peak (VmHWM) {peak / 1024:.1f} MB"
    )
    assert peak < 200 * 1024, f"relay peak RSS {peak / 1024:.0f} MB on one {n}-row transaction (bound 200 MB)"


# ----------------------------------------------------------------------------
def test_pending_before_first_start_and_writes_during_hand_over_exactly_once(ctx):
    topic, writers = start_load(ctx, 60_000, threads=4)
    relay = ctx.relay()
    assert ctx.slot() is None
    writers.start()
    assert writers.wait_committed(2000, 60), f"writers stuck: {writers.errors}"
    committed_at_start = writers.committed
    relay.start()
    ctx.wait_streaming(relay)
    committed_at_stream = writers.committed
    more = writers.wait_committed(committed_at_stream + 2000, 60)
    writers.stop()
    writers.join(60)
    assert more, "writers stopped early"
    total = writers.committed
    ctx.wait_all_published(total, 120, relay)
    ctx.wait_slot_confirmed(writers.max_pre_commit_lsn, 30, relay)
    rep = assert_delivered(ctx, topic, total, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"{committed_at_start} rows pending at the first start, {committed_at_stream - committed_at_start} committed "
        f"while the slot was created and the drain ran, {total - committed_at_stream} after streaming began: "
        f"{total} exactly once"
    )


# ----------------------------------------------------------------------------
def test_paced_single_row_commits_are_all_published(ctx):
    """One row per transaction at ~200/s, committed synchronously: the walsender sends
    each transaction as soon as its commit is flushed, often before the commit is
    visible to the relay's other session. Such a row must not be taken for "already
    marked" and dropped (it would stay pending, never sent)."""
    n, rate = 1000, 200.0
    topic = ctx.topic()
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    c = ctx.connect()
    t0 = time.monotonic()
    for i in range(n):
        enqueue(c, topic, f"k{i % 10}", b"paced %d" % i)
        hold(max(0.0, t0 + (i + 1) / rate - time.monotonic()))  # pacing the workload
    t_written = time.monotonic() - t0
    try:
        ctx.wait_all_published(n, 30, relay)
    except AssertionError as e:
        stuck = ctx._query("SELECT id FROM outbox.events WHERE published_at IS NULL ORDER BY id LIMIT 20")
        raise AssertionError(f"{e}\nrows never published (first ids): {[r[0] for r in stuck]}") from None
    records = ctx.kafka.consume_all(topic, n, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.records == n, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(f"{n} single-row transactions in {t_written:.1f}s: all published exactly once")


# ----------------------------------------------------------------------------
MULTI_KEYS = [f"m-{i:02d}" for i in range(20)]


def write_one_statement(conn, how: str, topic: str, n: int) -> None:
    """n outbox rows in ONE transaction: a multi-row INSERT ... SELECT or a COPY."""
    if how == "insert":
        conn.execute(
            "INSERT INTO outbox.events (topic, key, payload, headers)"
            " SELECT %s, 'm-' || lpad((g %% 20)::text, 2, '0'), convert_to('row ' || g, 'UTF8'),"
            " jsonb_build_object('type', 'Multi', 'n', g::text) FROM generate_series(1, %s) g",
            (topic, n),
        )
        return
    buf = io.StringIO()
    for g in range(1, n + 1):
        # text COPY format: bytea as \\x hex, jsonb as text
        payload = f"row {g}".encode().hex()
        buf.write(f"{topic}\tm-{g % 20:02d}\t\\\\x{payload}\t{{\"type\": \"Multi\", \"n\": \"{g}\"}}\n")
    with conn.cursor() as cur:
        with cur.copy("COPY outbox.events (topic, key, payload, headers) FROM STDIN") as cp:
            cp.write(buf.getvalue())


@pytest.mark.parametrize("kill", [False, True], ids=["no_kill", "sigkill_mid_delivery"])
@pytest.mark.parametrize("how", ["insert", "copy"])
def test_one_statement_of_1000_rows_one_commit_lsn(ctx, how, kill):
    n, batch = 1000, 50
    topic = ctx.topic()
    # linger 100 ms: each batch of 50 takes ~0.1 s, so "in the middle" is reachable
    window = 4 * batch
    overrides = {"source": {"polling": {"batch_size": batch}, "pipeline": {"max_in_flight_rows": window}}}
    if kill:
        overrides["kafka"] = {"properties": {"linger.ms": "100"}}
    relay = ctx.relay(overrides).start()
    ctx.wait_streaming(relay)
    pre = ctx.wal_lsn()  # below the end of the statement's commit
    with ctx.connect() as c:
        write_one_statement(c, how, topic, n)
        post = lsn_int(c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # at or past it
    assert ctx.counts()[0] == n
    note = ""
    unmarked_at_kill: set[str] = set()
    if kill:
        ctx.wait_marked_at_least(3 * batch, 60, relay)
        relay.kill()
        marked_at_kill = ctx.marked()
        unmarked_at_kill = {r.event_id for r in ctx.rows() if not r.published}
        assert 0 < marked_at_kill < n, f"inconclusive: {marked_at_kill}/{n} rows marked at the SIGKILL"
        s_kill = wait_until(lambda: (s := ctx.slot()) and not s.active and s, 30, 0.05, "slot released")
        # the transaction is not fully marked: the slot must not be past its commit
        assert (s_kill.confirmed_flush_lsn or 0) < post, (
            f"slot confirmed past the {n}-row transaction (commit ends by {lsn_text(post)}) with only "
            f"{marked_at_kill} rows marked: {s_kill.describe()}\n{relay.log_tail()}"
        )
        relay.start()
        note = f"SIGKILL at {marked_at_kill}/{n} marked; "
    ctx.wait_all_published(n, 120, relay)
    ctx.wait_slot_confirmed(pre, 30, relay)
    records = ctx.kafka.consume_all(topic, n, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.rows == n
    if kill:
        assert_no_loss(rep, relay, allow_duplicates=True)
        duplicates_only_in_flight(rep, unmarked_at_kill, window, relay)
    else:
        assert rep.records == n, explain(rep, relay)
        assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(f"{how} of {n} rows in one transaction: {note}0 lost, {rep.duplicate_count} duplicates")


# ----------------------------------------------------------------------------
def test_alter_table_add_column_while_streaming(ctx):
    total = 6_000
    topic, writers = start_load(ctx, total, threads=4)
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    writers.start()
    ctx.wait_marked_at_least(1000, 60, relay)
    with ctx.connect() as c:
        c.execute("ALTER TABLE outbox.events ADD COLUMN it_note text DEFAULT 'added mid-stream'")
        max_id_at_alter = c.execute("SELECT coalesce(max(id), 0) FROM outbox.events").fetchone()[0]
    writers.join(180)
    relay.assert_running("after ALTER TABLE ADD COLUMN")
    after = ctx._query("SELECT count(*) FROM outbox.events WHERE id > %s", (max_id_at_alter,))[0][0]
    assert after > 0, "inconclusive: no row inserted after the ALTER TABLE"
    ctx.wait_all_published(total, 120, relay)
    ctx.wait_slot_confirmed(writers.max_pre_commit_lsn, 30, relay)
    rep = assert_delivered(ctx, topic, total, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(f"ALTER TABLE ADD COLUMN after row {max_id_at_alter}; {after} rows after it; {total} exactly once")


# ----------------------------------------------------------------------------
def test_a_previous_relay_walsender_on_the_slot_is_ended_and_the_new_leader_streams(ctx):
    """Regression: a standby that became leader while the old leader's walsender still held
    the slot exited 1 after 15 s (and crash-looped); it now ends that walsender and streams."""
    with ctx.connect() as c:
        c.execute(f"CREATE PUBLICATION {ctx.publication} FOR TABLE outbox.events WITH (publish = 'insert')")
        c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (ctx.slot_name,))
    # Stands for the old leader's walsender: same application_name as the relay's.
    stale = ctx.recvlogical(application_name="outbox-relay").start()
    held = wait_until(lambda: (s := ctx.slot()) and s.active and s.active_pid and s, 30, 0.05,
                      "the stale walsender holding the slot",
                      lambda: stale.running or pytest.fail(f"pg_recvlogical exited: {stale.log_text()}"))
    topic = ctx.topic()
    relay = ctx.relay().start()
    with ctx.connect() as c:
        enqueue(c, topic, "k", b"after the take-over")
    reader = ctx.reader(topic)
    assert reader.wait_for(lambda rs: len(rs) >= 1, 60), relay.log_tail()
    relay.assert_running("after taking the slot over")
    assert ctx.slot().active_pid != held.active_pid
    assert "walsender of a previous outbox-relay session" in relay.log_text(), relay.log_tail()


LEADER_LOCK_HOLDER = """
SELECT l.pid FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.objid = (hashtext('outbox-relay')::bigint & 4294967295)::oid AND l.classid = 0
"""
WAITING_ON_LEADER_LOCK = LEADER_LOCK_HOLDER.replace("l.granted", "NOT l.granted")


def test_failover_with_per_pod_application_names_ends_the_old_walsender(ctx):
    """Regression: with a per-pod application_name in the dsn, a standby that became leader
    while the old leader's walsender still held the slot took that walsender for another
    consumer (its application_name differs) and exited 1: a crash loop on Kubernetes. The
    old leader here is frozen (SIGSTOP, as a node that stopped answering) and its leader-lock
    session ended, so its walsender holds the slot when the standby leads, every time."""
    topic = ctx.topic()
    a = ctx.relay({"postgres": {"dsn": ctx.dsn + " application_name=orders-relay-a"}}, name="relay-a").start()
    ctx.wait_streaming(a)
    b = ctx.relay({"postgres": {"dsn": ctx.dsn + " application_name=orders-relay-b"}}, name="relay-b").start()
    wait_until(lambda: len(ctx._query(WAITING_ON_LEADER_LOCK)) == 1, 60, 0.05, "relay-b stands by",
               b.assert_running)
    held = ctx.slot()
    assert held.active and held.active_pid, held.describe()
    (holder,) = ctx._query(LEADER_LOCK_HOLDER)
    a.signal(signal.SIGSTOP)
    try:
        ctx._query("SELECT pg_terminate_backend(%s)", (holder[0],))
        with ctx.connect() as c:
            enqueue(c, topic, "k", b"after the take-over")
        reader = ctx.reader(topic)
        wait_until(lambda: reader.wait_for(lambda rs: len(rs) >= 1, 0.5), 60, 0.0,
                   "relay-b publishing as the new leader", lambda: b.assert_running("taking over"))
        b.assert_running("after taking the slot over")
        now = ctx.slot()
        assert now.active and now.active_pid != held.active_pid, now.describe()
        assert "walsender of a previous outbox-relay session" in b.log_text(), b.log_tail()
        assert "another consumer" not in b.log_text(), b.log_tail()
    finally:
        a.kill()


def test_slot_active_for_another_process_exits_1_naming_the_slot(ctx):
    with ctx.connect() as c:
        c.execute(f"CREATE PUBLICATION {ctx.publication} FOR TABLE outbox.events WITH (publish = 'insert')")
        c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (ctx.slot_name,))
    other = ctx.recvlogical().start()
    held = wait_until(
        lambda: (s := ctx.slot()) and s.active and s.active_pid and s,
        30,
        0.05,
        "pg_recvlogical holding the slot",
        lambda: other.running or pytest.fail(f"pg_recvlogical exited: {other.log_text()}"),
    )
    relay = ctx.relay().start()
    t0 = time.monotonic()
    try:
        rc = relay.wait(60)
    except Exception:  # noqa: BLE001
        pytest.fail(f"relay still running 60 s after start, slot held by PID {held.active_pid}:\n{relay.log_tail()}")
    took = time.monotonic() - t0
    log = relay.log_text()
    assert rc == 1, f"exit {rc} (expected 1):\n{relay.log_tail()}"
    assert took < 40, f"exited only after {took:.1f}s"
    errors = [ln for ln in log.splitlines() if ctx.slot_name in ln and "active" in ln.lower() and "error" in ln.lower()]
    assert errors, f"no error line naming slot {ctx.slot_name} as active:\n{relay.log_tail()}"
    now = ctx.slot()
    assert other.running and now.active and now.active_pid == held.active_pid, (
        f"the other consumer lost the slot: {held.describe()} -> {now.describe()}"
    )
    ctx.note(f"slot held by pg_recvlogical: relay exit {rc} after {took:.1f}s: {errors[-1].strip()[:200]}")


# ----------------------------------------------------------------------------
def test_invalidated_slot_exits_1_and_is_not_recreated(ctx):
    topic = ctx.topic()
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    c = ctx.connect()
    enqueue(c, topic, "k", b"first")
    ctx.wait_all_published(1, 60, relay)
    assert relay.terminate(60) == 0, relay.log_tail()
    wait_until(lambda: (s := ctx.slot()) and not s.active, 30, 0.05, "slot released")
    c.execute("CREATE TABLE public.noise (id int, pad text)")
    admin = ctx.pg.connect("postgres", autocommit=True)
    try:
        admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        admin.execute("SELECT pg_reload_conf()")
        # rows that become pending while the relay is down (published after the recovery)
        for i in range(5):
            enqueue(c, topic, f"k{i}", b"while down")
        rounds = 0
        while True:
            s = ctx.slot()
            if s.wal_status == "lost":
                break
            rounds += 1
            assert rounds <= 15, f"slot not invalidated after {rounds - 1} rounds of WAL: {s.describe()}"
            c.execute("INSERT INTO public.noise SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 4000) g")
            c.execute("SELECT pg_switch_wal()")
            c.execute("CHECKPOINT")
        lost = ctx.slot()

        t0 = time.monotonic()
        relay.start()
        try:
            rc = relay.wait(60)
        except Exception:  # noqa: BLE001
            pytest.fail(f"relay still running 60 s after start on an invalidated slot:\n{relay.log_tail()}")
        took = time.monotonic() - t0
        log = relay.log_text().split("start #2")[-1]
        assert rc == 1, f"exit {rc} (expected 1):\n{relay.log_tail()}"
        lines = [  # (the slot and database names contain the test's name: "invalidated")
            ln
            for ln in log.splitlines()
            if ctx.slot_name in ln
            and re.search(r"\berror\b", ln.lower())
            and "invalidated" in ln.replace(ctx.slot_name, "").replace(ctx.db, "").lower()
        ]
        assert lines, f"no line saying slot {ctx.slot_name} was invalidated:\n{relay.log_tail()}"
        assert any("pg_drop_replication_slot" in ln for ln in lines), f"no recovery hint:\n{lines}"
        after = ctx.slot()
        n_slots = ctx._query("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")[0][0]
        assert after is not None and after.wal_status == "lost" and after.restart_lsn is None, (
            f"the relay re-created or repaired the invalidated slot: {lost.describe()} -> "
            f"{after.describe() if after else 'dropped'}"
        )
        assert after.confirmed_flush_lsn == lost.confirmed_flush_lsn and n_slots == 1, (lost, after, n_slots)

        chk = relay.check()
        out = chk.stdout + chk.stderr
        check_note = "check has no wal_status line (not asserted)"
        if "wal_status" in out:
            slot_lines = [ln for ln in out.splitlines() if "wal_status" in ln]
            assert chk.returncode != 0, f"check exit 0 with an invalidated slot:\n{out}"
            assert any("lost" in ln and ln.split()[0].upper().startswith("FAIL") for ln in slot_lines), out
            check_note = f"check exit {chk.returncode}: {slot_lines[0].strip()[:160]}"
    finally:
        admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()

    # recovery as the message says: drop the slot, start again; the pending rows follow
    c.execute("SELECT pg_drop_replication_slot(%s)", (ctx.slot_name,))
    relay.start()
    ctx.wait_all_published(6, 60, relay)
    records = ctx.kafka.consume_all(topic, 6, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"slot lost after {rounds} rounds of ~4 MB + switch + checkpoint; relay exit {rc} after {took:.1f}s: "
        f"{lines[0].strip()[:160]}...; slot left as is (lost); {check_note}; after drop + restart 6/6 exactly once"
    )


# ----------------------------------------------------------------------------
def test_first_start_with_an_open_transaction_sigterm_is_prompt(ctx):
    """Creating the slot waits for every transaction open at that moment. The relay
    must still honour SIGTERM promptly (docs/reference/cli.md: SIGTERM waits at most
    relay.shutdown_timeout_ms, for deliveries in flight; here none are), and nothing
    is lost once the transaction commits."""
    topic = ctx.topic()
    a = ctx.connect(autocommit=False)
    enqueue(a, topic, "key-a", b"open during the first start")  # holds an xid
    with ctx.connect() as b:
        enqueue(b, topic, "key-b", b"committed, pending")
    relay = ctx.relay({"relay": {"shutdown_timeout_ms": 5000}}).start()

    def creating():
        r = ctx._query(
            "SELECT pid, wait_event_type, wait_event FROM pg_stat_activity"
            " WHERE backend_type = 'walsender' AND datname = current_database()"
        )
        return r and r[0][2] == "transactionid" and r[0]

    desc = "the relay's slot creation waiting for the open transaction"
    ws = wait_until(creating, 30, 0.05, desc, relay.assert_running)
    t0 = time.monotonic()
    try:
        rc = relay.terminate(30)
    except Exception as e:  # noqa: BLE001 - RelayError: SIGKILLed after 30 s
        rc = f"no exit within 30 s ({e})"
    took = time.monotonic() - t0
    a.commit()
    ctx.note(f"SIGTERM while the slot creation waited for an open transaction (walsender {ws}): {rc} after {took:.1f}s")
    assert rc == 0 and took < 10, (
        f"SIGTERM while creating the slot (waiting for an open transaction): {rc} after {took:.1f}s, "
        f"expected exit 0 within shutdown_timeout (5 s) + 5 s\n{relay.log_tail()}"
    )
    relay.start()
    ctx.wait_all_published(2, 60, relay)
    records = ctx.kafka.consume_all(topic, 2, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()


# ----------------------------------------------------------------------------
@pytest.mark.chaos
def test_kafka_outage_longer_than_wal_sender_timeout_keeps_the_stream(ctx):
    """While a batch waits for Kafka the relay does not read the stream, but it keeps
    reporting its position, so the walsender does not time the connection out."""
    admin = ctx.pg.connect("postgres", autocommit=True)
    slot_pid = "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s"
    try:
        admin.execute("ALTER SYSTEM SET wal_sender_timeout = '3s'")
        admin.execute("SELECT pg_reload_conf()")
        topic = ctx.topic()
        relay = ctx.relay({"source": {"replication": {"status_interval_ms": 500}}}).start()
        ctx.wait_streaming(relay)
        with ctx.connect() as c:
            enqueue(c, topic, "k", b"before")
        ctx.wait_all_published(1, 60, relay)
        walsender = ctx._query(slot_pid, (ctx.slot_name,))[0][0]
        assert walsender is not None

        ctx.kafka.stop()
        with ctx.connect() as c:
            enqueue(c, topic, "k", b"during")  # its batch now waits for Kafka
        alive = lambda: relay.assert_running("while Kafka was down")  # noqa: E731
        hold(10.0, check=alive)  # more than three wal_sender_timeouts
        during = ctx._query(slot_pid, (ctx.slot_name,))[0][0]
        ctx.kafka.start()
        ctx.wait_all_published(2, 120, relay)
        after = ctx._query(slot_pid, (ctx.slot_name,))[0][0]
        assert during == walsender and after == walsender, (
            f"the replication connection was lost during the outage: walsender {walsender} -> "
            f"{during} -> {after}\n{relay.log_tail()}")
        assert "replication stream" not in relay.log_text(), relay.log_tail()
        records = ctx.kafka.consume_all(topic, 2, timeout_s=60)
        assert [r.value for r in records] == [b"before", b"during"]
        assert relay.terminate(60) == 0, relay.log_tail()
    finally:
        admin.execute("ALTER SYSTEM RESET wal_sender_timeout")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()


# ----------------------------------------------------------------------------
@pytest.mark.chaos
def test_rows_pending_at_first_start_kafka_down_all_published_before_newer_rows(ctx):
    """Regression: a Kafka outage during the first-start drain ended it with rows left
    pending, which the stream never brings.

    Rows pending at the first start are published by the drain, and the drain
    ends only once each of them is resolved: a Kafka outage during the drain must not
    end it with rows left pending (the unit tests of ReplicationSource cover a drain
    batch that fails transiently; here deliveries wait, message.timeout.ms being 0). Before the fix the drain ended after a short batch however it went;
    those rows were committed before the slot's consistent point, so the stream
    never brought them: they stayed pending (until a restart, which then published
    them after newer events of the same keys) while newer rows flowed. The
    replication connection waits idle during the drain: wal_sender_timeout (3 s
    here) must not cost it."""
    n_old, n_new, keys = 500, 100, [f"d-{i}" for i in range(10)]
    topic = ctx.topic()
    with ctx.connect(autocommit=False) as c:
        for i in range(n_old):
            enqueue(c, topic, keys[i % len(keys)], b"pending at the first start %d" % i)
        c.commit()
    old_max = ctx._query("SELECT max(id) FROM outbox.events")[0][0]
    walsenders = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = current_database()"
    admin = ctx.pg.connect("postgres", autocommit=True)
    try:
        admin.execute("ALTER SYSTEM SET wal_sender_timeout = '3s'")
        admin.execute("SELECT pg_reload_conf()")
        ctx.kafka.stop()
        t0 = time.monotonic()
        relay = ctx.relay({
            "source": {"polling": {"batch_size": 1000}},
        }).start()
        alive = lambda: relay.assert_running("while Kafka was down")  # noqa: E731
        hold(8.0, check=alive)
        c = ctx.connect()
        for i in range(n_new // 2):  # newer events of the same keys, while Kafka is down...
            enqueue(c, topic, keys[i % len(keys)], b"newer, during the outage %d" % i)
        hold(max(0.0, t0 + 12.0 - time.monotonic()), check=alive)
        assert ctx.counts()[1] == 0, "rows marked published while Kafka was down"
        pids_down = {r[0] for r in ctx._query(walsenders)}
        down_s = time.monotonic() - t0
        ctx.kafka.start()
        t_up = time.monotonic()
        for i in range(n_new // 2, n_new):  # ...and after it came back
            enqueue(c, topic, keys[i % len(keys)], b"newer, after the outage %d" % i)

        def old_done():
            left, newer = ctx._query(
                "SELECT count(*) FILTER (WHERE id <= %s AND published_at IS NULL),"
                " count(*) FILTER (WHERE id > %s AND published_at IS NOT NULL) FROM outbox.events",
                (old_max, old_max),
            )[0]
            old_done.last = (left, newer)
            return left == 0

        old_done.last = None
        try:
            wait_until(old_done, 60, 0.2, "the rows pending at the first start published", alive)
        except AssertionError as e:
            left, newer = old_done.last
            raise AssertionError(
                f"{e}: {left} of {n_old} rows pending at the first start still unpublished "
                f"{time.monotonic() - t_up:.0f}s after Kafka came back, while {newer} of {n_new} newer rows "
                f"were published\n{relay.log_tail()}"
            ) from None
        took = time.monotonic() - t_up
        ctx.wait_all_published(n_old + n_new, 60, relay)
        pids_after = {r[0] for r in ctx._query(walsenders)}
    finally:
        admin.execute("ALTER SYSTEM RESET wal_sender_timeout")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()
    assert len(pids_down) == 1 and pids_after == pids_down, (
        f"the replication connection was lost during the drain: walsenders {pids_down} -> {pids_after}\n"
        + relay.log_tail()
    )
    records = ctx.kafka.consume_all(topic, n_old + n_new, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.rows == n_old + n_new
    assert_no_loss(rep, relay, allow_duplicates=True)
    # per key: every event pending at the first start reached Kafka before any newer one
    for key in keys:
        ids = [r.outbox_id for r in sorted(records, key=lambda r: (r.partition, r.offset)) if r.key == key]
        last_old = max((i for i, oid in enumerate(ids) if oid <= old_max), default=-1)
        first_new = min((i for i, oid in enumerate(ids) if oid > old_max), default=len(ids))
        assert last_old < first_new, f"key {key}: a newer event reached Kafka before an older pending one: {ids}"
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"{n_old} rows pending at the first start, Kafka down {down_s:.0f}s ("
        f"wal_sender_timeout 3s): all published {took:.1f}s after Kafka was back, before every newer row "
        f"of their keys; {rep.duplicate_count} duplicates; one walsender throughout"
    )


def test_a_transaction_waiting_for_a_synchronous_standby_keeps_health_and_shows_the_wait(ctx):
    """Regression: a committed transaction that waits for a synchronous standby is decoded
    before other sessions see it; the relay polled PostgreSQL every 2 ms without ticking
    /healthz, so liveness restarted it in a loop, and nothing showed why events waited.
    Here a standby that never comes holds one writer's commit (synchronous_commit on, as
    services commit; the relay's own sessions commit locally)."""
    import threading

    from test_http import get, metric

    topic = ctx.topic()
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    admin = ctx.connect()
    admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'outbox_it_absent_standby'")
    admin.execute("SELECT pg_reload_conf()")
    waiter = ctx.connect()
    done = threading.Event()

    def commit_and_wait():
        try:
            enqueue(waiter, topic, "k", b"held by the standby")  # autocommit: waits at COMMIT
        finally:
            done.set()

    t = threading.Thread(target=commit_and_wait, daemon=True)
    try:
        wait_until(lambda: ctx._query("SELECT current_setting('synchronous_standby_names')")[0][0]
                   == "outbox_it_absent_standby", 10, 0.05, "the setting reloaded")
        t.start()
        wait_until(lambda: (metric(relay, "outbox_relay_replication_visibility_wait_seconds") or 0) > 3,
                   60, 0.2, "the relay showing its wait", lambda: relay.assert_running())
        assert not done.is_set()
        assert get(relay, "/healthz")[0] == 200
        assert metric(relay, "outbox_relay_loop_tick_age_seconds") < 2.5
    finally:
        admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")
    assert done.wait(30), "the writer's commit was not released"
    reader = ctx.reader(topic)
    assert reader.wait_for(lambda rs: len(rs) >= 1, 30), relay.log_tail()
    wait_until(lambda: metric(relay, "outbox_relay_replication_visibility_wait_seconds") == 0, 30, 0.1,
               "the wait gauge back to 0")
    ctx.note("a commit held by an absent synchronous standby: /healthz 200 and the wait shown; "
             "published once released")


# ----------------------------------------------------------------------------
def slot_sent_txns(ctx) -> int:
    """Transactions the slot's walsender decoded and handed to pgoutput (sent), summed over
    the slot's life: pg_stat_replication_slots.total_txns (PostgreSQL 14+). Transactions that
    commit before START_REPLICATION's position are decoded without being sent, not counted."""
    rows = ctx._query("SELECT total_txns FROM pg_stat_replication_slots WHERE slot_name = %s", (ctx.slot_name,))
    return int(rows[0][0]) if rows else 0


def test_restart_drain_is_not_streamed_again(ctx):
    """Regression: after a restart's drain the stream started at the slot's confirmed
    position, so the walsender decoded and sent every drained row again and the relay checked
    and dropped each before a new row could pass (13.6 s after a 1,000,000-row drain). The
    stream now starts where the drain's bound was fixed: the drained transactions are not
    sent (pg_stat_replication_slots.total_txns), every row still arrives once, and a row
    committed after the drain arrives."""
    topic = ctx.topic()
    relay = ctx.relay().start()
    ctx.wait_streaming(relay)
    c = ctx.connect()
    enqueue(c, topic, "warm", b"warm-up")
    ctx.wait_all_published(1, 30, relay)
    assert relay.terminate(60) == 0, relay.log_tail()

    txns, per_txn = 40, 25
    w = ctx.connect(autocommit=False)
    for t in range(txns):
        for i in range(per_txn):
            enqueue(w, topic, f"k{i % 5}", b"drained %d.%d" % (t, i))
        w.commit()
    sent_before = slot_sent_txns(ctx)

    relay.start()
    ctx.wait_all_published(1 + txns * per_txn, 60, relay)
    ctx.wait_streaming(relay)
    enqueue(c, topic, "after", b"after the drain")
    total = 2 + txns * per_txn
    ctx.wait_all_published(total, 30, relay)
    sent = slot_sent_txns(ctx) - sent_before
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.records == total, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(60) == 0, relay.log_tail()
    assert sent < txns, (
        f"the stream sent {sent} transactions after the restart: the {txns} drained ones again\n"
        + relay.log_grep("stream")
    )
    ctx.note(f"{txns} drained transactions, {sent} sent by the stream after the restart")


def test_a_long_restart_drain_keeps_the_stream_opened_at_its_start(ctx):
    """Regression: the stream opened when a restart's drain starts was not read until the
    drain ended, and the server's messages filled the socket: most of the backlog's rows again
    (the stream started at the WAL flush position, which asynchronous commits leave far behind
    the last commit) and the rows services wrote meanwhile. The server ended the connection
    after its tcp_user_timeout (the relay sets 10 s), and the next stream decoded again all the
    WAL since the slot's restart position: a row written after a 1,000,000-row drain waited
    2.5 s at p50, 4.9 s at p99. The stream now starts at the insert position and the relay
    empties the socket while the drain runs. Here the server's tcp_user_timeout is 1 s (the
    dsn's options), 300,000 rows are drained and 20,000 more written during the drain, all
    with asynchronous commits: the walsender must survive the drain."""
    topic = ctx.topic()
    overrides = {"postgres": {"dsn": ctx.dsn + " options='-c tcp_user_timeout=1000'"},
                 "source": {"polling": {"batch_size": 1000}, "pipeline": {"max_in_flight_rows": 5000}}}
    relay = ctx.relay(overrides).start()
    ctx.wait_streaming(relay)
    c = ctx.connect()
    enqueue(c, topic, "warm", b"warm-up")
    ctx.wait_all_published(1, 30, relay)
    assert relay.terminate(60) == 0, relay.log_tail()

    def write(txns: int, per_txn: int) -> int:
        c.execute(f"""DO $$ BEGIN FOR t IN 1..{txns} LOOP
                        INSERT INTO outbox.events (topic, key, payload)
                        SELECT '{topic}', 'k' || (g % 100), convert_to(repeat('x', 200), 'UTF8')
                        FROM generate_series(1, {per_txn}) g;
                        COMMIT;
                      END LOOP; END $$""")
        return txns * per_txn

    # Asynchronous commits, as the bench's writers and many services make them.
    c.execute("SET synchronous_commit = off")
    backlog = write(300, 1000)
    log_from, server_from = len(relay.log_text()), len(ctx.pg.log_text())
    relay.start()
    wait_until(lambda: "opening the stream at" in relay.log_text()[log_from:], 60, 0.01,
               "the stream opened as the drain starts", relay.assert_running)
    during = write(200, 100)
    assert "streaming from replication slot" not in relay.log_text()[log_from:], \
        "the drain ended before the rows written during it: the test needs a longer drain"
    ctx.wait_all_published(1 + backlog + during, 240, relay)
    ctx.wait_streaming(relay)
    enqueue(c, topic, "after", b"after the drain")
    ctx.wait_all_published(2 + backlog + during, 60, relay)
    server_log = ctx.pg.log_text()[server_from:]
    assert "could not receive data from client" not in server_log, \
        "the server ended the relay's stream while the drain ran:\n" + server_log[-2000:]
    assert "server closed the connection" not in relay.log_text(), relay.log_grep("stream")
    assert relay.terminate(60) == 0, relay.log_tail()
