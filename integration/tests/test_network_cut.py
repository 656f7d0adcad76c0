"""A network cut between the relay and PostgreSQL (issue "Half-open connections").

The relay reaches PostgreSQL through a TCP forwarder (harness/netcut.py) whose
packets the test drops with nftables on loopback: the peers do not see a closed
socket, they see nothing at all, as when a network breaks. Both ends must notice
within seconds thanks to the keepalive and TCP_USER_TIMEOUT settings build_conninfo
adds (client side: libpq keywords; server side: -c settings in `options`):

- the server ends the relay's sessions (the zombies), and with them the leader
  advisory lock and, in replication mode, the slot they hold;
- the relay logs the PostgreSQL failure instead of hanging in a libpq call.

Once the network is back the relay reconnects through the forwarder, takes the
leader lock again and publishes every row, the ones written during the cut too:
0 lost, per-key order kept. Runs in both source modes.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest

from harness import audit, wait_until
from harness.checks import KEYS_100, assert_no_loss, start_load
from harness.netcut import NetCutUnavailable, TcpForwarder

CUT_S = 40.0  # how long the network stays cut
SERVER_BOUND_S = 30.0  # the server must have ended the relay's sessions by then
RELAY_BOUND_S = 30.0  # the relay must have logged the PostgreSQL failure by then

# The relay's leader lock: pg_try_advisory_lock(hashtext('outbox-relay')), a bigint key
# shown in pg_locks as classid = its high 32 bits, objid = its low 32 bits, objsubid = 1.
LEADER_LOCK_PIDS_SQL = """
SELECT l.pid FROM pg_locks l, (SELECT hashtext('outbox-relay')::bigint AS k) key
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ((key.k >> 32) & 4294967295)::oid AND l.objid = (key.k & 4294967295)::oid
  AND l.objsubid = 1
"""

RELAY_SESSIONS_SQL = """
SELECT pid, backend_type, client_port FROM pg_stat_activity
WHERE application_name = 'outbox-relay' AND datname = current_database() AND pid <> pg_backend_pid()
"""

# A warn/error line of the relay that reports the lost PostgreSQL connection.
PG_FAILURE_LINE = re.compile(r"^\S+\s+(warn\w*|error|critical)\b.*(PostgreSQL|replication)", re.I)


@pytest.fixture(params=["polling", "replication"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def forwarder(ctx):
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (integration/env/install-deps.sh does)")
    try:
        fwd = TcpForwarder(ctx.pg.port)
    except NetCutUnavailable as e:  # e.g. not root: no CAP_NET_ADMIN
        pytest.fail(f"cannot change the nftables ruleset here (run the tests as root): {e}")
    try:
        yield fwd
    finally:
        fwd.close()  # removes the rules even when the test failed mid-cut


def leader_lock_pids(ctx) -> set[int]:
    return {r[0] for r in ctx._query(LEADER_LOCK_PIDS_SQL)}


def relay_sessions(ctx) -> dict[int, tuple[str, int]]:
    return {r[0]: (r[1], r[2]) for r in ctx._query(RELAY_SESSIONS_SQL)}


def test_network_cut_both_ends_notice_and_nothing_is_lost(ctx, forwarder):
    relay_dsn = f"host=127.0.0.1 port={forwarder.port} dbname={ctx.db} user=postgres"
    # short backoff: the relay is back soon after the network is
    relay = ctx.relay({"postgres": {"dsn": relay_dsn}, "relay": {"backoff_max_ms": 2000}}).start()
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)
    topic, before = start_load(ctx, 4000, threads=4, seed=1)
    during = ctx.writers(topic, KEYS_100, 3000, threads=2, seed=2, track_lsn=ctx.mode == "replication")
    before.start()
    ctx.wait_marked_at_least(300, 60, relay)
    if ctx.mode == "replication":
        ctx.wait_streaming(relay)  # cut the stream itself, not the initial drain

    # ------------------------------------------------------------------ cut
    log_offset = len(relay.log_text())
    cut_ports = forwarder.cut()
    t_cut = forwarder.cut_at
    relay._note(f"network cut (forwarder port {forwarder.port}, upstream ports {cut_ports})")
    during.start()  # services go on writing (directly, not through the forwarder)
    zombies = relay_sessions(ctx)
    lock_pids = leader_lock_pids(ctx)
    slot_pid = ctx.slot().active_pid if ctx.mode == "replication" else None
    try:
        assert zombies, "no session of the relay in pg_stat_activity at the cut"
        strays = {pid: s for pid, s in zombies.items() if s[1] not in cut_ports}
        assert not strays, f"relay sessions not through the forwarder (ports {cut_ports}): {strays}"
        assert lock_pids and lock_pids <= set(zombies), (
            f"leader lock held by {lock_pids}, relay sessions {zombies}"
        )
        if ctx.mode == "replication":
            assert slot_pid in zombies, f"slot active for {slot_pid}, relay sessions {zombies}"
            assert any(s[0] == "walsender" for s in zombies.values()), zombies

        t_server = t_relay = None
        relay_line = ""
        last_server = None
        deadline = t_cut + CUT_S
        while time.monotonic() < deadline:
            relay.assert_running("while the network was cut")
            now = time.monotonic()
            if t_relay is None:
                new = relay.log_text()[log_offset:]
                hits = [ln for ln in new.splitlines() if PG_FAILURE_LINE.search(ln)]
                if hits:
                    t_relay, relay_line = now - t_cut, hits[0]
            if t_server is None:
                alive = set(relay_sessions(ctx)) & set(zombies)
                holders = leader_lock_pids(ctx)
                slot_holder = ctx.slot().active_pid if ctx.mode == "replication" else None
                last_server = (alive, holders, slot_holder)
                if not alive and not holders and slot_holder not in zombies:
                    t_server = now - t_cut
            time.sleep(0.2)  # polling interval while the cut lasts
    finally:
        forwarder.restore()
        relay._note("network restored")
    t_restored = forwarder.restored_at

    def secs(t):
        return f"{t:.1f}s" if t is not None else "never"

    freed = "the leader lock" + (" and the slot" if slot_pid else "")
    ctx.note(
        f"{ctx.mode}: network cut {t_restored - t_cut:.1f}s; the server ended the relay's {len(zombies)} "
        f"sessions and freed {freed} after {secs(t_server)}; the relay logged the failure after {secs(t_relay)}"
    )
    problems = []
    if t_server is None or t_server > SERVER_BOUND_S:
        problems.append(
            f"the server did not end the relay's zombie sessions within {SERVER_BOUND_S}s of the cut "
            f"({secs(t_server)}); at the cut: sessions {zombies}, leader lock {lock_pids}; last seen "
            f"(still alive, lock holders, slot holder) = {last_server}"
        )
    if t_relay is None or t_relay > RELAY_BOUND_S:
        problems.append(
            f"the relay did not report the PostgreSQL failure within {RELAY_BOUND_S}s of the cut ({secs(t_relay)})"
        )
    assert not problems, "\n".join(problems) + f"\nrelay log tail:\n{relay.log_tail()}"
    print(f"relay: {relay_line}")

    # -------------------------------------------------------------- restored
    def leader_again():
        holders = leader_lock_pids(ctx)
        return holders and not (holders & set(zombies)) and holders

    new_leader = wait_until(
        leader_again, 60, 0.1, "the relay holding the leader lock again", lambda: relay.assert_running()
    )
    t_back = time.monotonic() - t_restored
    assert set(relay_sessions(ctx)) >= new_leader, "the leader lock is not the relay's"
    before.join(120)
    during.join(120)
    total = 7000
    ctx.wait_all_published(total, 90, relay)
    records = ctx.kafka.consume_all(topic, total, timeout_s=90)
    rep = audit(ctx.rows(), records)
    assert rep.rows == total
    assert_no_loss(rep, relay, allow_duplicates=True)
    for w in (before, during):
        ctx.check_slot_caught_up(w.max_pre_commit_lsn, relay)
    assert relay.terminate(60) == 0, relay.log_tail()
    ctx.note(
        f"{ctx.mode}: leader again {t_back:.1f}s after the network came back; {total} rows "
        f"({during.committed} written during the cut): 0 lost, {rep.duplicate_count} duplicates"
    )
