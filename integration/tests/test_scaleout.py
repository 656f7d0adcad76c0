"""Scale-out in polling mode (docs/operations/sizing.md "Scaling out", relay/pg/shards.h): relays with
`source.polling.shards: S` share the rows by a hash of their key, claiming shards through
session advisory locks, under service-like writers (per-key sequence numbers).

1. Two relays share the shards (each holds S/2 and publishes), one is SIGKILLed under load
   and the other takes every shard, a third joins and gets its share after a rebalance;
   audited: lost 0, per-key order kept, duplicates at most one window (the kill).
2. Relays that would split the rows differently never publish together: with a relay of
   S = 4 running, one with S = 2 and one with S = 1 (the single leader lock) stand by and
   publish nothing; after a clean stop of the first, exactly one of them takes over.

Who holds what is read from both sides: each relay's /metrics (outbox_relay_shards_held)
and PostgreSQL's pg_locks (one granted lock per shard, on as many sessions as relays).
"""

from __future__ import annotations

import json
import time

import pytest

from harness import deep_merge, wait_until
from harness.faults import FaultRun, profile
from test_http import metric  # /metrics of a relay, one series

P = profile()
pytestmark = pytest.mark.timeout(300)

SHARDS = 4
SHARD_CLASS = 1869574002  # relay/pg/shards.h kShardClass
SHARD_LOCKS = f"""
SELECT l.objid::bigint::int, l.pid FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = {SHARD_CLASS}
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def sharded(shards: int) -> dict:
    return {"source": {"polling": {"shards": shards, "shards_rebalance_interval_ms": 200}}}


def held(relay) -> int:
    v = metric(relay, "outbox_relay_shards_held")
    return -1 if v is None else int(v)


def published(relay) -> int:
    return int(metric(relay, "outbox_relay_events_published_total") or 0)


def lock_holders(ctx) -> dict[int, int]:
    """shard -> backend pid holding its lock."""
    return {shard: pid for shard, pid in ctx._query(SHARD_LOCKS)}


def wait_split(ctx, relays, expected: list[int], what: str) -> None:
    """Until the relays hold `expected` shards (as a multiset, from their metrics) and
    pg_locks shows every shard held once, on len(relays) sessions."""

    def probe():
        counts = sorted(held(r) for r in relays)
        locks = lock_holders(ctx)
        probe.last = (counts, locks)
        return counts == sorted(expected) and len(locks) == SHARDS and len(set(locks.values())) == len(relays)

    def alive():
        for r in relays:
            r.assert_running(what)

    probe.last = None
    try:
        wait_until(probe, 60, 0.05, what, alive)
    except AssertionError as e:
        tails = "\n".join(f"--- {r.name}:\n{r.log_tail(15)}" for r in relays)
        raise AssertionError(f"{e}; (held per relay, shard -> pid) = {probe.last}\n{tails}") from None


def wait_publishing(run, relay, rows: int = 50) -> None:
    """Until `relay` itself has published `rows` more events (its own counter)."""
    base = published(relay)
    wait_until(lambda: published(relay) >= base + rows, 60, 0.05, f"{relay.name} publishing",
               lambda: relay.assert_running("while waiting for it to publish"))


def test_relays_share_shards_take_over_a_killed_one_and_rebalance_to_a_newcomer(ctx):
    run = FaultRun(ctx, "scaleout", P, relay_overrides=sharded(SHARDS))
    a, b = run.relay(name="relay-a"), run.relay(name="relay-b")
    a.start()
    b.start()
    run.writers.start()
    wait_split(ctx, [a, b], [2, 2], "two relays holding 2 shards each")
    wait_publishing(run, a)
    wait_publishing(run, b)

    # b dies under load: its session ends, its shards are free, a takes them all.
    t_kill = time.monotonic()
    b.kill()
    run.crashes += 1
    wait_split(ctx, [a], [SHARDS], "the survivor holding every shard")
    takeover = time.monotonic() - t_kill
    wait_publishing(run, a)

    # A newcomer: a gives back its extras at a by-state read, c takes them.
    c = run.relay(name="relay-c")
    c.start()
    wait_split(ctx, [a, c], [2, 2], "the survivor and the newcomer holding 2 shards each")
    wait_publishing(run, c)
    wait_publishing(run, a)
    # `status --json` names both relays and their shards (and no single leader).
    st = a.command("status", "--json")
    assert st.returncode == 0, st.stderr
    report = json.loads(st.stdout)
    assert report["leader"] is None, report
    assert sorted(len(h["shards"]) for h in report["shards"]) == [2, 2], report
    assert sorted(k for h in report["shards"] for k in h["shards"]) == list(range(SHARDS)), report
    ctx.note(f"scaleout: b's shards held by a {takeover:.2f} s after the kill (rebalance interval "
             f"0.2 s); a published {published(a)}, c {published(c)}")
    run.finish(a, f"{SHARDS} shards: 2 relays, one SIGKILLed, a third joined",
               duplicates="per_crash", other_relays=(c,))


def test_relays_with_another_split_stand_by_until_the_running_ones_are_gone(ctx):
    run = FaultRun(ctx, "scaleout_resplit", P, relay_overrides=sharded(4))
    x = run.relay(name="relay-s4")
    run.start(x)
    y = run.relay(name="relay-s2", overrides=run.overrides | sharded(2))
    z = run.relay(name="relay-s1", overrides=run.overrides | sharded(1))  # the leader lock
    y.start()
    z.start()
    wait_until(lambda: "relays with source.polling.shards: 4 are running" in y.log_text(), 60, 0.05,
               "relay-s2 standing by", y.assert_running)
    wait_until(lambda: "standing by" in z.log_text(), 60, 0.05, "relay-s1 standing by", z.assert_running)
    wait_publishing(run, x, rows=200)  # x keeps publishing meanwhile; they do not
    assert published(y) == 0 and published(z) == 0, (published(y), published(z))
    assert held(y) == 0

    # A clean stop of x: exactly one of the two takes over (either split, never both).
    assert x.terminate(60) == 0
    base = ctx.marked()
    wait_until(lambda: ctx.marked() > base + 100, 60, 0.05, "a relay taking over after relay-s4 stopped")
    winner, loser = (y, z) if published(y) > 0 else (z, y)
    assert published(winner) > 0 and published(loser) == 0
    run.fault_over()
    total = ctx.counts()[0]
    ctx.wait_all_published(total, 120, winner)
    assert published(loser) == 0, f"{loser.name} published although {winner.name} leads"
    ctx.note(f"scaleout_resplit: {winner.name} took over after relay-s4 stopped, {loser.name} stood by")
    run.finish(winner, "relay with 4 shards running, one with 2 and one with 1 waiting; the first stopped",
               duplicates="none", other_relays=(loser,))


def test_relays_joining_and_leaving_cleanly_hand_shards_over_without_a_duplicate(ctx):
    """Three relays joining and leaving cleanly (SIGTERM) under load, so that shards are
    handed over again and again while the others publish: per-key order kept, nothing
    lost, and not one duplicate: a shard is given back only when nothing of it is in flight
    and its rows are marked, so its next holder never sends one of them again."""
    # Reads of one row are full, so the relays read ahead with rows in flight; messages wait
    # 200 ms in the producer (linger.ms) and the relays look every 100 ms: a shard given
    # back with rows still in flight would be read again by its next holder before those
    # rows are marked, and sent twice.
    overrides = deep_merge(sharded(8), {
        "source": {"polling": {"shards_rebalance_interval_ms": 100, "batch_size": 1}},
        "kafka": {"properties": {"linger.ms": "200"}}})
    run = FaultRun(ctx, "scaleout_churn", P, relay_overrides=overrides)
    relays = [run.relay(name=f"relay-{i}") for i in range(3)]
    relays[0].start()
    run.writers.start()
    run.wait_progress(relays[0])
    changes = 0
    for step in range(14):
        r = relays[step % 3] if step < 3 else relays[run.rng.randrange(len(relays))]
        if not r.running:
            r.start()
        elif sum(x.running for x in relays) > 1:  # always someone publishing
            assert r.terminate(60) == 0
        else:
            continue
        changes += 1
        # the members see the change and hand shards over; rows get marked meanwhile
        running = [x for x in relays if x.running]
        wait_until(lambda: sum(max(held(x), 0) for x in running) == 8
                   and all(held(x) > 0 for x in running), 60, 0.05,
                   "the running relays sharing all 8 shards", lambda: [x.assert_running() for x in running])
        run.wait_progress(rows=100)
    last = next(x for x in relays if x.running)
    others = tuple(x for x in relays if x is not last)
    run.finish(last, f"8 shards, 3 relays: {changes} joins and clean stops under load",
               duplicates="none", other_relays=others)
