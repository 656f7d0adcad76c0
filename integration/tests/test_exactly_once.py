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
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness import hold, wait_until
from harness.faults import LEADS, FaultRun, crash_points_compiled, leader_and_standby, profile

P = profile()
pytestmark = pytest.mark.timeout(P.test_timeout_s)

EOS = {"delivery": {"guarantee": "exactly_once"}}
RECOVERED = "were not marked published (the previous run stopped between the commit and the mark)"
FENCED = "this producer was fenced"


@pytest.fixture(params=["polling", "replication"])
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def crash_build(relay_bin):
    if not crash_points_compiled(relay_bin):
        msg = f"{relay_bin} was built without -DOUTBOX_CRASH_POINTS=ON (integration/test-all.sh turns it on)"
        if os.environ.get("OUTBOX_IT_REQUIRE_BINARY"):
            pytest.fail(msg)
        pytest.skip(msg)
    return relay_bin


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
    t_end = time.monotonic() + P.kill_loop_s
    while time.monotonic() < t_end:
        hold(run.rng.uniform(*P.kill_interval_s), check=_alive(relay, "between kills"))
        relay.kill()
        run.crashes += 1
        relay.start()
    run.fault_over()
    run.finish(relay, f"{run.crashes} SIGKILLs in {P.kill_loop_s:.0f} s (exactly_once)", duplicates="none")


def test_eos_crash_after_commit(ctx, crash_build):
    run = _eos_run(ctx, "eos_crash_after_commit")
    spec = "after_commit:3"
    relay = run.relay(env={"OUTBOX_RELAY_CRASH_AT": spec})
    relay.start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay, timeout_s=60)
    run.writers.start()
    wait_until(lambda: not relay.running, 120, 0.05, f"the relay dying at crash point {spec}")
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
