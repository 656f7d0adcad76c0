"""The relay behind PgBouncer: Debian's pgbouncer, started per test by the harness
(harness.PgBouncer) on a free port in front of the session's PostgreSQL, in each pool mode.

- transaction and statement pooling: `check` fails on the line "postgres session" naming the
  pool mode and the fix, `run` refuses at start (exit 1) in both source modes and marks nothing;
- session pooling: the relay publishes end to end through it; a second relay through the same
  pool stands by and takes over when the leader is SIGKILLed (PgBouncer's DISCARD ALL frees the
  leader lock with the client);
- replication mode through a session pool: the walsender connection PgBouncer refuses is a clear
  error (exit 1), not a retry loop;
- a pool refusing the startup parameter `options` (no ignore_startup_parameters): `check` says
  what to add;
- services: outbox.enqueue through a transaction pool, relay connected directly, everything
  published once and in key order.
"""

from __future__ import annotations

import signal

import pytest

from harness import PgBouncer, audit, enqueue, setup_keys, wait_until
from harness.checks import KEYS_100, assert_no_loss, explain


@pytest.fixture
def bouncer(it_root, pg, request):
    """make(pool_mode, **kw) -> a started PgBouncer in front of the session's PostgreSQL; all
    stopped (by pid) when the test ends."""
    made: list[PgBouncer] = []
    base = it_root / "pgbouncer" / request.node.name.replace("[", "_").replace("]", "")

    def make(pool_mode: str, **kw) -> PgBouncer:
        b = PgBouncer(base / f"{pool_mode}-{len(made)}", pg, pool_mode, **kw)
        made.append(b)
        return b.start()

    try:
        yield make
    finally:
        for b in made:
            b.stop()


def through(ctx, b: PgBouncer, overrides: dict | None = None) -> dict:
    cfg = ctx.config(overrides)
    cfg["postgres"]["dsn"] = b.dsn_for(ctx.db)
    return cfg


@pytest.mark.parametrize("source_mode", ["polling", "replication"])
@pytest.mark.parametrize("pool_mode", ["transaction", "statement"])
def test_check_and_run_refuse_a_pool_that_shares_sessions(ctx_factory, bouncer, pool_mode, source_mode):
    """Regression: through PgBouncer in transaction or statement mode `check` passed and `run`
    published, its leader lock left in a server session any client could get next."""
    ctx = ctx_factory(source_mode)
    b = bouncer(pool_mode)
    topic = ctx.topic()
    with ctx.connect() as c:
        enqueue(c, topic, "k", b"pending")
    relay = ctx.relay(through(ctx, b), name=f"relay-{pool_mode}")

    r = relay.check()
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"FAIL  postgres session: PostgreSQL is reached through a connection pooler in "
            f"{pool_mode} pooling mode (PgBouncer pool_mode = {pool_mode})") in r.stdout, r.stdout
    assert "two relays could both believe they lead" in r.stdout, r.stdout
    assert ("fix: point postgres.dsn at PostgreSQL directly, or at a PgBouncer pool in session "
            "mode") in r.stdout, r.stdout
    assert "ok    postgres reachable" in r.stdout, r.stdout

    relay.start()
    assert relay.wait(60) == 1, relay.log_tail()
    assert (f"stopping: PostgreSQL is reached through a connection pooler in {pool_mode} pooling "
            f"mode") in relay.log_text(), relay.log_tail()
    assert ctx.counts() == (1, 0), "the refused relay marked a row"


def test_session_pool_publishes_and_fails_over(ctx, bouncer):
    b = bouncer("session")
    topic = ctx.topic()
    total = 300
    with ctx.connect() as c:
        for i in range(total):
            enqueue(c, topic, f"key-{i % 10}", f"event {i}".encode())

    leader = ctx.relay(through(ctx, b), name="leader")
    r = leader.check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("ok    postgres session: a server session of its own through a connection pooler in "
            "session mode") in r.stdout, r.stdout

    leader.start()
    ctx.wait_all_published(total, 60, leader)
    assert ("postgres session: a server session of its own through a connection pooler in "
            "session mode") in leader.log_text(), leader.log_tail()

    # A second relay through the same pool stands by, and leads once the leader is gone:
    # PgBouncer resets the leader's server session (DISCARD ALL) when its client closes.
    standby = ctx.relay(through(ctx, b), name="standby").start()
    standby_line = "another outbox-relay holds the leader lock on this database; standing by"
    wait_until(lambda: standby_line in standby.log_text(), 30, 0.05, "the second relay standing by",
               standby.assert_running)
    leader.signal(signal.SIGKILL)
    leader.wait(30)
    with ctx.connect() as c:
        for i in range(total, 2 * total):
            enqueue(c, topic, f"key-{i % 10}", f"event {i}".encode())
    ctx.wait_all_published(2 * total, 60, standby)

    records = ctx.kafka.consume_all(topic, 2 * total, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.rows == 2 * total
    assert_no_loss(rep, standby, allow_duplicates=True)
    assert standby.terminate(30) == 0, standby.log_tail()


def test_replication_mode_through_a_pool_is_refused_clearly(ctx_factory, bouncer):
    ctx = ctx_factory("replication")
    b = bouncer("session")
    relay = ctx.relay(through(ctx, b)).start()
    assert relay.wait(60) == 1, relay.log_tail()
    log = relay.log_text()
    assert "unsupported startup parameter: replication" in log, relay.log_tail()
    assert "a connection pooler (PgBouncer) refused the replication connection" in log, relay.log_tail()
    assert "point postgres.dsn at PostgreSQL directly" in log, relay.log_tail()


def test_check_names_the_pgbouncer_setting_for_the_options_parameter(ctx, bouncer):
    b = bouncer("session", ignore_options=False)
    r = ctx.relay(through(ctx, b), name="options").check()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  postgres reachable" in r.stdout, r.stdout
    assert "unsupported startup parameter: options" in r.stdout, r.stdout
    assert "ignore_startup_parameters = extra_float_digits, options" in r.stdout, r.stdout


def test_services_enqueue_through_a_transaction_pool(ctx, bouncer):
    """Services may keep their transaction pool: enqueue is a function call in their own
    transaction (its hint a NOTIFY at commit), whichever server session runs it."""
    b = bouncer("transaction")
    total = 2000
    topic = ctx.topic()
    with ctx.connect(autocommit=False) as c:
        setup_keys(c, KEYS_100)
    writers = ctx.writers(topic, KEYS_100, total, threads=6)
    writers.connect = lambda: b.connect(ctx.db)
    relay = ctx.relay().start()  # directly
    writers.start()
    writers.join(120)
    ctx.wait_all_published(total, 120, relay)
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.rows == total, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    assert relay.terminate(30) == 0, relay.log_tail()
