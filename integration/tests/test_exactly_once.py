"""delivery.guarantee: exactly_once on real servers, in both source modes (relay/core/
README-eos.md has the protocol). Consumers read read_committed (the audits do: harness/
faults.read_topic and `outbox-relay audit`); every test asserts lost = 0 and duplicates = 0
(FaultRun.finish(duplicates="none")), per-key order, every row marked.

 - test_eos_end_to_end          writers, one relay: nothing lost, no duplicate; the
                                checkpoint topic holds this relay's transactional.id
 - test_eos_sigkill_loop        the relay SIGKILLed every 2-4 s under concurrent writers
                                (at-least-once re-sends up to a window per kill: here 0)
 - test_eos_crash_after_commit  the relay dies between the Kafka commit and the PostgreSQL
                                mark; the restart's recovery marks the committed rows from
                                the checkpoint (logged), none is sent again
 - test_eos_zombie_fenced       two relays with the same identity: the leader frozen
                                (SIGSTOP) inside a transaction, its PostgreSQL session
                                terminated, the standby takes over and publishes; the old
                                one resumed (SIGCONT) is fenced: it commits and marks nothing
 - test_eos_checkpoint_topic_refused   a pre-created checkpoint topic of 3 partitions, or
                                with cleanup.policy=delete: the relay refuses to start, sends
                                nothing, says what to do
 - test_eos_recovery_waits_for_a_hidden_checkpoint   another producer's open transaction on
                                the shared checkpoint topic hides the newest checkpoint:
                                recovery waits (sends and marks nothing) until it ends
 - test_eos_rewound_ids_are_sent_not_marked   the database rewound after a commit (ids
                                reused by other events): recovery marks only the rows whose
                                event_id the checkpoint names, the new events are sent
 - test_eos_transactional_id_needs_a_failover_proof_identity   a role that may not read
                                the system identifier: refused, naming
                                delivery.transactional_id; with it set, the relay runs
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from harness import hold, wait_until
from harness.faults import LEADS, FaultRun, leader_and_standby, profile, read_topic

P = profile()
pytestmark = pytest.mark.timeout(P.test_timeout_s)

EOS = {"delivery": {"guarantee": "exactly_once"}}
RECOVERED = "were not marked published (the previous run stopped between the commit and the mark)"
FENCED = "this producer was fenced"


@pytest.fixture(params=["polling", "replication"])
def mode(request) -> str:
    return request.param


def _eos_run(ctx, scenario: str, overrides: dict | None = None) -> FaultRun:
    from harness.relay import deep_merge

    # a per-test checkpoint topic keeps the tests independent of each other
    cp = ctx.topic("checkpoints", partitions=1, create=False)
    return FaultRun(ctx, scenario, P, deep_merge({"delivery": {**EOS["delivery"], "checkpoint_topic": cp}},
                                                 overrides or {}))


def _alive(relay, what: str):
    return lambda: relay.assert_running(what)


def _checkpoint_keys(ctx, topic: str) -> set:
    with ctx.kafka.reader(topic) as r:
        recs = list(r.read(1, 30, 1.0))
    return {rec.key for rec in recs}


def test_eos_end_to_end(ctx):
    run = _eos_run(ctx, "eos_e2e")
    relay = run.start(run.relay())
    hold(3.0, check=_alive(relay, "under load"))
    run.finish(relay, "none (exactly_once, writers for 3 s)", duplicates="none")
    log = relay.log_text()
    assert "delivery: exactly_once, transactional.id outbox-relay:" in log, relay.log_tail()
    tid = log.split("transactional.id ", 1)[1].split(",", 1)[0]
    assert tid.endswith(":polling" if ctx.mode == "polling" else f":replication:{ctx.slot_name}"), tid
    keys = _checkpoint_keys(ctx, run.config["delivery"]["checkpoint_topic"])
    assert keys in ({tid}, {tid.encode()}), keys


def test_eos_sigkill_loop(ctx):
    run = _eos_run(ctx, "eos_sigkill_loop")
    relay = run.start(run.relay())
    run.sigkill_loop(relay)
    run.finish(relay, f"{run.crashes} SIGKILLs in {P.kill_loop_s:.0f} s (exactly_once)", duplicates="none")


def test_eos_crash_after_commit(ctx, crash_build):
    run = _eos_run(ctx, "eos_crash_after_commit")
    spec = "after_commit:3"
    relay = run.run_to_crash_point(spec)
    assert relay.wait(5) == -9, relay.log_tail()
    assert "crash point after_commit reached" in relay.log_text(), relay.log_tail()
    run.crashes += 1
    marked = ctx.marked()
    del relay.env["OUTBOX_RELAY_CRASH_AT"]
    relay.start()
    # the restart's recovery marks what the dead one committed and did not mark
    wait_until(lambda: RECOVERED in relay.log_text(), 60, 0.05, "the recovery's log line",
               _alive(relay, "recovering"))
    run.fault_over()
    run.finish(relay, f"OUTBOX_RELAY_CRASH_AT={spec} ({marked:,} marked at the crash), restarted",
               duplicates="none")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _leader_sessions(ctx) -> list:
    """The PostgreSQL sessions that make the leader: the advisory lock's holder, and in
    replication mode the slot's walsender too."""
    rows = ctx._query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    pids = [r[0] for r in rows]
    if ctx.mode == "replication":
        s = ctx.slot()
        if s is not None and s.active_pid:
            pids.append(s.active_pid)
    return pids


def test_eos_zombie_fenced(ctx, crash_build):
    run = _eos_run(ctx, "eos_zombie")
    # A freezes itself (SIGSTOP) at its 5th transaction, data and checkpoint delivered and
    # not committed: a zombie holding an open transaction
    old = run.relay(name="relay-old", env={"OUTBOX_RELAY_CRASH_AT": "before_commit:5:stop"})
    old.start()
    wait_until(lambda: "delivery: exactly_once" in old.log_text(), 60, 0.05, "the old relay up",
               _alive(old, "at start"))
    if ctx.mode == "replication":
        ctx.wait_streaming(old, timeout_s=60)
    new = run.relay(name="relay-new")
    new.start()
    run.writers.start()
    wait_until(lambda: _state(old.pid) == "T", 120, 0.05, "the old relay frozen inside a transaction",
               _alive(old, "before freezing"))
    assert "before_commit reached (hit 5): SIGSTOP" in old.log_text(), old.log_tail()
    marked_frozen = ctx.marked()
    sessions = _leader_sessions(ctx)
    assert sessions, "no leader session to terminate"
    ctx._query("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (sessions,))
    # the standby takes over: init_transactions fences the frozen producer, it publishes
    ctx.wait_marked_at_least(marked_frozen + 200, 120, new)
    old.signal(signal.SIGCONT)
    # the zombie tries to commit its transaction: Kafka refuses it (fenced), it marks nothing
    wait_until(lambda: FENCED in old.log_text() or not old.running, 60, 0.05, "the zombie fenced")
    assert FENCED in old.log_text(), old.log_tail()
    assert "marks nothing" in old.log_text(), old.log_tail()
    hold(2.0, check=_alive(new, "after the zombie woke"))
    run.fault_over()
    row = run.finish(new, "leader frozen in a transaction, session terminated, standby led; old resumed",
                     duplicates="none", other_relays=(old,))
    assert row.duplicates == 0 and row.lost == 0


def test_eos_check_reports_the_mode_and_transactions(ctx):
    """`check` says which guarantee is configured and, for exactly_once, that this cluster
    lets the relay use transactions (init_transactions with a probe id of its own)."""
    cp = ctx.topic("checkpoints", partitions=1, create=False)
    r = ctx.relay({"delivery": {"guarantee": "exactly_once", "checkpoint_topic": cp}}).command("check")
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("ok    delivery"))
    assert "exactly_once (Kafka transactions available" in line, r.stdout
    r = ctx.relay(name="alo").command("check")
    assert "ok    delivery  " in r.stdout or "ok    delivery" in r.stdout, r.stdout
    assert "at_least_once" in r.stdout, r.stdout


@pytest.mark.parametrize("mode", ["polling"])
@pytest.mark.parametrize("partitions,config,said", [
    (3, {"cleanup.policy": "compact"}, "has 3 partitions; exactly_once needs exactly 1"),
    (1, {"cleanup.policy": "delete"}, "has cleanup.policy=delete; exactly_once needs cleanup.policy=compact"),
], ids=["3-partitions", "delete-policy"])
def test_eos_checkpoint_topic_refused(ctx, partitions, config, said):
    """Regression: a pre-created checkpoint topic of several partitions was written by key
    hash and read from partition 0 only (recovery blind, rows sent again); one with
    cleanup.policy=delete can lose the newest checkpoint. Both are refused at start."""
    cp = ctx.topic("checkpoints", partitions=partitions, config=config)
    topic = ctx.topic("events", partitions=1)
    with ctx.connect() as c:
        for i in range(5):
            c.execute("SELECT outbox.enqueue(%s, %s, %s::bytea, '{}'::jsonb)", (topic, f"k{i}", b"p"))
    relay = ctx.relay({"delivery": {"guarantee": "exactly_once", "checkpoint_topic": cp}})
    relay.start()
    assert relay.wait(60) != 0, relay.log_tail()
    assert said in relay.log_text(), relay.log_tail()
    assert "delivery.checkpoint_topic" in relay.log_text() or "kafka-configs.sh" in relay.log_text()
    assert ctx.marked() == 0
    assert read_topic(ctx.kafka, topic, 30) == []


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_eos_recovery_waits_for_a_hidden_checkpoint(ctx, crash_build):
    """Regression: another producer's open transaction on a shared checkpoint topic held its
    last stable offset below this relay's newest checkpoint; recovery read only up to it,
    marked an older checkpoint (here: none) and sent the committed rows again. Now it waits,
    sending and marking nothing, until that transaction ends; then 0 duplicates."""
    from confluent_kafka import Producer

    run = _eos_run(ctx, "eos_hidden_checkpoint")
    cp = run.config["delivery"]["checkpoint_topic"]
    ctx.kafka.create_topic(cp, 1, config={"cleanup.policy": "compact"})
    relay = run.relay(env={"OUTBOX_RELAY_CRASH_AT": "after_commit:3"})
    relay.start()
    wait_until(lambda: "the last checkpoint is marked" in relay.log_text(), 60, 0.05,
               "the relay's first recovery", _alive(relay, "recovering"))
    if ctx.mode == "replication":
        ctx.wait_streaming(relay, timeout_s=60)
    # another deployment's producer opens a transaction on the same topic and keeps it open
    other = Producer({"bootstrap.servers": ctx.kafka.bootstrap, "transactional.id": f"it-other-{ctx.name}",
                      "transaction.timeout.ms": 300000, "log_level": 3})
    other.init_transactions(30)
    other.begin_transaction()
    other.produce(cp, key=b"another-relay", value=b"1-10")
    assert other.flush(30) == 0
    run.writers.start()
    wait_until(lambda: not relay.running, 120, 0.05, "the relay dying at its 3rd commit")
    assert "crash point after_commit reached" in relay.log_text(), relay.log_tail()
    run.crashes += 1
    marked = ctx.marked()
    del relay.env["OUTBOX_RELAY_CRASH_AT"]
    relay.start()
    wait_until(lambda: "recovery waits: another producer's open transaction" in relay.log_text(), 60, 0.05,
               "recovery waiting for the hidden end", _alive(relay, "recovering"))
    assert ctx.marked() == marked  # nothing marked (nor sent: the audit below) while hidden
    other.abort_transaction(30)
    wait_until(lambda: RECOVERED in relay.log_text(), 60, 0.05, "the recovery's log line",
               _alive(relay, "recovering"))
    run.fault_over()
    run.finish(relay, "another producer's open transaction on the checkpoint topic at the restart",
               duplicates="none")


@pytest.mark.parametrize("mode", ["polling"])
def test_eos_rewound_ids_are_sent_not_marked(ctx, crash_build):
    """Regression: checkpoints named rows by id only; after a rewind of the database (a
    point-in-time restore, a failover to a standby that lagged) reused ids were marked
    published from the checkpoint and never sent. Now a row is marked only if its event_id
    is the checkpoint's."""
    cp = ctx.topic("checkpoints", partitions=1, create=False)
    topic = ctx.topic("events", partitions=1)
    with ctx.connect() as c:
        for i in range(10):
            c.execute("SELECT outbox.enqueue(%s, %s, %s::bytea, '{}'::jsonb)", (topic, f"k{i}", b"old"))
    relay = ctx.relay({"delivery": {"guarantee": "exactly_once", "checkpoint_topic": cp},
                       "source": {"polling": {"batch_size": 10}}})
    relay.env["OUTBOX_RELAY_CRASH_AT"] = "after_commit:1"
    relay.start()
    assert relay.wait(60) == -9, relay.log_tail()  # committed ids 1-10, marked nothing
    # the rewind: rows 6-10 are lost, their ids go to new events
    with ctx.connect() as c:
        c.execute("DELETE FROM outbox.events WHERE id > 5")
        c.execute("ALTER TABLE outbox.events ALTER COLUMN id RESTART WITH 6")
        for i in range(5):
            c.execute("SELECT outbox.enqueue(%s, %s, %s::bytea, '{}'::jsonb)", (topic, f"n{i}", b"new"))
        new_events = {r[0] for r in c.execute(
            "SELECT event_id::text FROM outbox.events WHERE id > 5").fetchall()}
        old_events = {r[0] for r in c.execute(
            "SELECT event_id::text FROM outbox.events WHERE id <= 5").fetchall()}
    assert len(new_events) == 5
    del relay.env["OUTBOX_RELAY_CRASH_AT"]
    relay.start()
    wait_until(lambda: ctx.marked() == 10, 60, 0.05, "every row marked", _alive(relay, "after the rewind"))
    assert relay.terminate() == 0
    log = relay.log_text()
    assert "5 rows under ids of the last checkpoint are other events" in log, relay.log_tail()
    assert "recovery: 5 rows of the last committed Kafka transaction" in log, relay.log_tail()
    seen: dict = {}
    for rec in read_topic(ctx.kafka, topic, 60):
        seen[rec.event_id] = seen.get(rec.event_id, 0) + 1
    assert all(seen.get(e) == 1 for e in new_events), seen
    assert all(seen.get(e) == 1 for e in old_events), seen
    assert len(seen) == 15 and set(seen.values()) == {1}, seen  # 5 kept, 5 lost, 5 new


@pytest.mark.parametrize("mode", ["polling"])
def test_eos_transactional_id_needs_a_failover_proof_identity(ctx):
    """Regression: a role that may not execute pg_control_system() (managed services revoke
    it) got a default transactional.id from the server's address, which a failover changes: the new leader neither fenced the old one nor found its
    checkpoints. Now the relay refuses to start and names the key to set."""
    role = f"it_relay_{uuid.uuid4().hex[:8]}"
    with ctx.connect() as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE outbox_relay')
        # as managed services do (PostgreSQL grants it to PUBLIC); this database only
        c.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        dsn = ctx.dsn.replace("user=postgres", f"user={role}")
        cp = ctx.topic("checkpoints", partitions=1, create=False)
        eos = {"guarantee": "exactly_once", "checkpoint_topic": cp}
        relay = ctx.relay({"postgres": {"dsn": dsn}, "delivery": eos})
        relay.start()
        assert relay.wait(60) != 0, relay.log_tail()
        log = relay.log_text()
        assert "cannot derive the transactional.id" in log, relay.log_tail()
        assert "Set delivery.transactional_id" in log, relay.log_tail()
        tid = f"outbox-relay:it:{ctx.name}"
        relay = ctx.relay({"postgres": {"dsn": dsn}, "delivery": {**eos, "transactional_id": tid}},
                          name="with-id")
        relay.start()
        wait_until(lambda: "the last checkpoint is marked" in relay.log_text(), 60, 0.05,
                   "the relay recovered", _alive(relay, "with delivery.transactional_id"))
        assert f"transactional.id {tid}," in relay.log_text()
        assert relay.terminate() == 0
    finally:
        with ctx.connect() as c:
            c.execute(f'DROP OWNED BY "{role}"')
            c.execute(f'DROP ROLE "{role}"')
