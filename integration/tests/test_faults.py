"""Fault injection on real servers: every scenario runs in both source modes with
service-like writers (per-key sequence) and ends with `outbox-relay audit --json` and the
Python audit, then prints one table row (harness/faults.py; the whole table is printed at
the end of the run). Expected in every row: lost = 0 and order violations = 0; duplicates
only where the relay died abruptly (at most one batch per death) or a server/network fault
made it re-send, and none after clean restarts (SIGTERM).

Scenarios (bounded in time and count; OUTBOX_FAULTS_PROFILE=short (default, CI) or full):
 1. relay_sigkill_loop   the relay SIGKILLed every 2-4 s (seeded) and restarted at once
 1b relay_sigterm_loop   the same with SIGTERM: clean restarts, no duplicate allowed
 2. kafka_sigkill        the broker SIGKILLed under load, restarted
 3. pg_immediate         PostgreSQL shut down with `-m immediate` (fsync on), restarted
                         (2 and 3: both modes side by side through the same server fault)
 4. net_pg / net_kafka   50-200 ms added to every chunk, then the network cut, between the
                         relay and one server (harness/faultnet.py: PostgreSQL through a
                         netcut forwarder; Kafka through a link in the relay's own network
                         namespace, so the advertised broker address goes through it too)
 5. two_relays           two relays started together, one leads; the leader SIGKILLed
 6. big_tx               one transaction of many rows, the relay SIGKILLed halfway
 7. crash_<point>        the relay built with OUTBOX_CRASH_POINTS dies at a crash point
                         (after_produce, after_delivery, inside_mark), restarted without it

Every scenario runs twice (the `delivery` fixture): delivery.guarantee at_least_once, with the
duplicate bounds above, and exactly_once, where duplicates must be 0 in every scenario
(after_delivery becomes before_commit there; test_exactly_once.py adds after_commit and the
zombie).

Run only these: `python -m pytest integration/tests/test_faults.py`. Synchronisation is by
polling observable state with deadlines (wait_until); `hold` only makes a fault last.
"""

from __future__ import annotations

import shutil
import time

import pytest

from harness import hold, wait_until
from harness.faults import LEADS, FaultRun, profile
from harness.netcut import NetCutUnavailable

P = profile()
pytestmark = pytest.mark.timeout(P.test_timeout_s)


@pytest.fixture(params=["at_least_once", "exactly_once"], autouse=True)
def delivery(request, monkeypatch) -> str:
    """Every scenario runs with delivery.guarantee at_least_once and exactly_once (then
    FaultRun.finish requires duplicates = 0 whatever the fault; consumers read
    read_committed)."""
    import harness.faults

    monkeypatch.setattr(harness.faults, "DELIVERY", request.param)
    return request.param


@pytest.fixture(params=["polling", "replication"])
def mode(request) -> str:
    return request.param


def _alive(relay, what: str):
    return lambda: relay.assert_running(what)


def _need_net_admin():
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.fail("nft and ip are needed (integration/env/install-deps.sh installs nftables)")


# -------------------------------------------------------------------- 1. relay
def test_relay_sigkill_loop(ctx):
    run = FaultRun(ctx, "relay_sigkill_loop", P)
    relay = run.start(run.relay())
    run.sigkill_loop(relay)
    run.finish(relay, f"{run.crashes} SIGKILLs in {P.kill_loop_s:.0f} s, restarted at once", duplicates="per_crash")


def test_relay_sigterm_loop(ctx):
    run = FaultRun(ctx, "relay_sigterm_loop", P)
    relay = run.start(run.relay())
    stops = 0
    t_end = time.monotonic() + P.term_loop_s
    while time.monotonic() < t_end:
        hold(run.rng.uniform(*P.kill_interval_s), check=_alive(relay, "between stops"))
        rc = relay.terminate(60)
        assert rc == 0, f"exit {rc} on SIGTERM:\n{relay.log_tail()}"
        stops += 1
        relay.start()
    run.fault_over()
    run.finish(relay, f"{stops} SIGTERMs in {P.term_loop_s:.0f} s, restarted at once", duplicates="none")


# ------------------------------------------------- 2, 3. server faults
# A server fault hits every relay using that server at once: both source modes run side by
# side (each its own database, topic and relay) through the same broker kill or PostgreSQL
# crash, which also halves the number of slow server restarts.
MODES = ("polling", "replication")


def _both_modes(ctx_factory, scenario: str) -> list:
    runs = [FaultRun(ctx_factory(m), scenario, P) for m in MODES]
    relays = [r.relay() for r in runs]
    for run, relay in zip(runs, relays):
        relay.start()
        if run.ctx.mode == "replication":
            run.ctx.wait_streaming(relay, timeout_s=60)
    for run in runs:
        run.writers.start()
    for run, relay in zip(runs, relays):
        run.wait_progress(relay)
    return list(zip(runs, relays))


def _all_alive(pairs, what: str):
    def check():
        for _, relay in pairs:
            relay.assert_running(what)

    return check


def _finish_all(pairs, fault: str) -> None:
    rows = [run.finish(relay, fault, duplicates="any", fail=False) for run, relay in pairs]
    failed = [r.details for r in rows if r.problems]
    if failed:
        pytest.fail("\n\n".join(failed), pytrace=False)


@pytest.mark.chaos
def test_kafka_sigkill(ctx_factory):
    pairs = _both_modes(ctx_factory, "kafka_sigkill")
    rng = pairs[0][0].rng
    kafka = pairs[0][0].ctx.kafka
    down = []
    for i in range(P.kafka_outages):
        if i:
            for run, relay in pairs:  # publishing again before the next kill
                run.wait_progress(relay, timeout_s=180)
        hold(rng.uniform(1.0, 2.0), check=_all_alive(pairs, "under load"))
        t0 = time.monotonic()
        kafka.stop(mode="kill")
        hold(P.kafka_outage_s, check=_all_alive(pairs, "while Kafka was down"))
        kafka.start()  # returns once the broker answers metadata requests
        down.append(time.monotonic() - t0)
    for run, _ in pairs:
        run.fault_over()
    _finish_all(pairs, f"broker SIGKILLed {len(down)}x, down {min(down):.0f}-{max(down):.0f} s (restart included)")


DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}


def _set_durable(pg, on: bool) -> None:
    with pg.connect("postgres", autocommit=True) as c:
        for k, v in DURABLE.items():
            c.execute(f"ALTER SYSTEM SET {k} = '{v}'" if on else f"ALTER SYSTEM RESET {k}")
        c.execute("SELECT pg_reload_conf()")


@pytest.mark.chaos
def test_pg_immediate_shutdown(pg, ctx_factory):
    """env/pg.sh runs the server with fsync, full_page_writes and synchronous_commit off
    (disposable data); this scenario turns them on (ALTER SYSTEM, reload) so that what a
    commit acknowledged survives the crash, and resets them afterwards."""
    _set_durable(pg, True)
    try:

        def durable():
            with pg.connect("postgres", autocommit=True) as c:  # a new session sees the reload
                got = {k: c.execute(f"SHOW {k}").fetchone()[0] for k in DURABLE}
            durable.last = got
            return got == DURABLE

        durable.last = None
        wait_until(durable, 30, 0.1, "fsync, full_page_writes, synchronous_commit on")
        pairs = _both_modes(ctx_factory, "pg_immediate")
        rng = pairs[0][0].rng
        down = []
        log_offset = len(pg.log_text())
        for i in range(P.pg_outages):
            if i:
                for run, relay in pairs:
                    run.wait_progress(relay, timeout_s=180)
            hold(rng.uniform(1.0, 2.0), check=_all_alive(pairs, "under load"))
            t0 = time.monotonic()
            pg.stop(mode="immediate")  # SIGQUIT, what pg_ctl stop -m immediate sends: no checkpoint
            hold(P.pg_outage_s, check=_all_alive(pairs, "while PostgreSQL was down"))
            pg.start()  # crash recovery, then ready
            down.append(time.monotonic() - t0)
        log = pg.log_text()[log_offset:]
        assert "automatic recovery in progress" in log, "PostgreSQL logged no crash recovery:\n" + log[-3000:]
        for run, _ in pairs:
            run.fault_over()
        _finish_all(
            pairs, f"immediate shutdown {len(down)}x (fsync on), down {min(down):.0f}-{max(down):.0f} s each"
        )
    finally:
        pg.ensure_running()
        _set_durable(pg, False)


# ------------------------------------------------------------------ 4. network
def _slow_then_cut(run, relay, link, cut_s: float, what: str) -> str:
    lo, hi = P.delay_ms
    link.slow(lo, hi)
    relay._note(f"{what}: {lo:.0f}-{hi:.0f} ms added")
    hold(P.net_slow_s, check=_alive(relay, f"while {what} was slowed"))
    link.unslow()
    relay._note(f"{what}: latency removed")
    run.wait_progress(relay, timeout_s=120)  # publishing at full speed again before the cut
    link.cut()
    relay._note(f"{what}: network cut")
    try:
        hold(cut_s, check=_alive(relay, f"while the network to {what} was cut"))
    finally:
        link.restore()
        relay._note(f"{what}: network restored")
    return f"{lo:.0f}-{hi:.0f} ms added for {P.net_slow_s:.0f} s, then cut {cut_s:.0f} s"


def test_net_pg(ctx):
    """Relay <-> PostgreSQL: harness/netcut.py's forwarder (nftables drops for the cut) with
    a delay line for the latency; the writers reach PostgreSQL directly."""
    from harness.faultnet import SlowForwarder

    _need_net_admin()
    try:
        fwd = SlowForwarder(ctx.pg.port, seed=7)
    except NetCutUnavailable as e:
        pytest.fail(f"cannot change the nftables ruleset here (run the tests as root): {e}")
    try:
        dsn = f"host=127.0.0.1 port={fwd.port} dbname={ctx.db} user=postgres"
        run = FaultRun(ctx, "net_pg", P, {"postgres": {"dsn": dsn}})
        relay = run.start(run.relay())
        fault = _slow_then_cut(run, relay, fwd, P.net_cut_s, "PostgreSQL")
        run.fault_over()
        run.finish(relay, fault, duplicates="any")
    finally:
        fwd.close()


def test_net_kafka(ctx):
    """Relay <-> Kafka: the relay runs in its own network namespace where the broker's
    address (bootstrap and advertised: 127.0.0.1:PORT) is a link to the real broker."""
    from harness.faultnet import Netns, NetnsLink

    _need_net_admin()
    try:
        ns = Netns()
    except (NetCutUnavailable, OSError) as e:
        pytest.fail(f"cannot create a network namespace here (run the tests as root): {e}")
    links = []
    try:
        links.append(NetnsLink(ns, ctx.pg.port))  # PostgreSQL: no fault
        kafka_link = NetnsLink(ns, ctx.kafka.port, seed=11)
        links.append(kafka_link)
        run = FaultRun(ctx, "net_kafka", P)
        relay = run.relay(binary=ns.wrapper(ctx.relay_bin, ctx.workdir))
        run.start(relay)
        assert kafka_link.accepted >= 1, "the relay does not reach Kafka through the link"
        fault = _slow_then_cut(run, relay, kafka_link, P.net_kafka_cut_s, "Kafka")
        run.fault_over()
        run.finish(relay, fault, duplicates="any")
    finally:
        for link in links:
            link.close()
        ns.close()


# ------------------------------------------------------------ 5. two relays
def test_two_relays_leader_killed(ctx):
    run = FaultRun(ctx, "two_relays", P)
    leader, standby = run.start_leader_and_standby(lambda: P.leader_load_s, "at start")
    leader.kill()
    run.crashes += 1
    t_kill = time.monotonic()
    run.fault_over()  # the fault is the leader's death; the standby must take over
    wait_until(
        lambda: LEADS in standby.log_text(), 60, 0.05, "the standby taking the leader lock",
        _alive(standby, "after the leader died"),
    )
    takeover = time.monotonic() - t_kill
    run.finish(
        standby,
        f"leader ({leader.name}) SIGKILLed after {P.leader_load_s:.0f} s; standby led {takeover:.1f} s later",
        duplicates="per_crash",
    )


# ------------------------------------------------------- 6. big transaction
BULK_SQL = """
INSERT INTO outbox.events (topic, key, payload, headers)
SELECT %(topic)s, 'big-' || lpad((g %% 50)::text, 2, '0'),
       convert_to(format('{"n":%%s,"pad":"%%s"}', g, repeat('p', 100)), 'UTF8'),
       jsonb_build_object('type', 'Bulk', 'n', g::text)
FROM generate_series(1, %(n)s) g ORDER BY g
"""


def test_big_tx_relay_killed_halfway(ctx):
    n = P.big_tx_rows
    run = FaultRun(ctx, "big_tx", P)
    relay = run.start(run.relay())
    t0 = time.monotonic()
    with ctx.connect() as c:  # one statement, one transaction, while the writers go on
        c.execute(BULK_SQL, {"topic": run.topic, "n": n})
    t_insert = time.monotonic() - t0

    def big_marked():
        return ctx._query(
            "SELECT count(*) FROM outbox.events WHERE key LIKE 'big-%%' AND published_at IS NOT NULL"
        )[0][0]

    half = wait_until(lambda: (m := big_marked()) >= n // 2 and m, 300, 0.02, f">= {n // 2} big rows marked",
                      _alive(relay, "publishing the big transaction"))
    relay.kill()
    run.crashes += 1
    marked_at_kill = big_marked()
    assert marked_at_kill < n, f"inconclusive: all {n} rows were marked before the SIGKILL"
    relay.start()
    run.fault_over()
    run.finish(
        relay,
        f"{n:,} rows in one transaction ({t_insert:.0f} s to insert); SIGKILL at {marked_at_kill:,} marked"
        f" (seen {half:,})",
        duplicates="per_crash",
        drain_timeout_s=600,
    )


# ------------------------------------------------------------ 7. crash points
@pytest.mark.parametrize("point", ["after_produce", "after_delivery", "inside_mark"])
def test_crash_point(ctx, crash_build, point, delivery):
    if delivery == "exactly_once" and point == "after_delivery":
        # the transactional loop's equivalent: every report in, not committed, nothing marked
        point = "before_commit"
    run = FaultRun(ctx, f"crash_{point}", P)
    spec = f"{point}:{P.crash_hit}"
    relay = run.run_to_crash_point(spec)
    rc = relay.wait(5)
    assert rc == -9, f"the relay exited {rc}, not by SIGKILL, at crash point {spec}:\n{relay.log_tail()}"
    assert f"crash point {point} reached" in relay.log_text(), relay.log_tail()
    run.crashes += 1
    marked = ctx.marked()
    del relay.env["OUTBOX_RELAY_CRASH_AT"]
    relay.start()
    run.fault_over()
    run.finish(
        relay,
        f"OUTBOX_RELAY_CRASH_AT={spec} ({marked:,} rows marked at the crash), restarted without it",
        duplicates="per_crash",
        # killed between Kafka's acknowledgement and the mark: that batch must come again
        expect_duplicates=point in ("after_delivery", "inside_mark"),
    )
