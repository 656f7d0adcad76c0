"""The HTTP endpoint of `outbox-relay run` on real servers (polling mode; the metrics test
runs in both modes): /metrics (Prometheus text
format, checked by promtool), /healthz, /readyz for a leader, a standby, a relay whose
broker does not answer, and the pending/oldest-age gauges while Kafka is stopped.

Every relay the harness starts listens on a free port (http.port 0); Relay.http_port()
reads the bound port from the log line "http: listening on ADDRESS:PORT".
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from harness import enqueue, wait_until

FAST_STATS = {"http": {"port": 0, "stats_interval_ms": 300}}


def get(relay, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:PORT/path on `relay`."""
    url = f"http://127.0.0.1:{relay.http_port()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[str, float]:
    """Sample lines of an exposition: series (name{labels}) -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def metric(relay, series: str) -> float | None:
    status, body = get(relay, "/metrics")
    assert status == 200, body
    return samples(body).get(series)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: integration/env/install-deps.sh installs Debian's prometheus"
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"promtool check metrics failed:\n{r.stdout}{r.stderr}\n---\n{text}"


def fill(ctx, topic: str, n: int) -> None:
    with ctx.connect() as c:
        for i in range(n):
            enqueue(c, topic, f"k{i % 7}", f"payload {i}".encode(), {"type": "HttpTest"})


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["polling", "replication"])  # the slot gauges: replication
def test_metrics_count_what_was_published_and_pass_promtool(ctx):
    n = 120
    topic = ctx.topic(partitions=3)
    fill(ctx, topic, n)
    relay = ctx.relay(FAST_STATS).start()
    ctx.wait_all_published(n, 90, relay)
    # the counter moves right after the mark's commit, which the table shows first
    wait_until(lambda: metric(relay, "outbox_relay_events_published_total") == n, 30, 0.1,
               f"published counter == {n}")
    wait_until(lambda: metric(relay, "outbox_relay_pending_events") == 0, 30, 0.1, "pending gauge 0")
    status, text = get(relay, "/metrics")
    assert status == 200
    promtool_check(text)
    s = samples(text)
    assert s["outbox_relay_events_published_total"] == n
    assert s['outbox_relay_events_failed_total{reason="transient"}'] == 0
    assert s['outbox_relay_events_dead_lettered_total{topic="other"}'] == 0
    # histograms: every delivery timed, buckets cumulative up to +Inf == count
    assert s["outbox_relay_publish_duration_seconds_count"] == n
    assert s['outbox_relay_publish_duration_seconds_bucket{le="+Inf"}'] == n
    buckets = [v for k, v in s.items() if k.startswith("outbox_relay_publish_duration_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert 1 <= s["outbox_relay_batch_size_count"] <= n
    assert s["outbox_relay_batch_size_sum"] == n  # every row read exactly once
    assert s["outbox_relay_mark_duration_seconds_count"] >= 1
    assert s['outbox_relay_role{role="leader"}'] == 1 and s['outbox_relay_role{role="standby"}'] == 0
    assert s["outbox_relay_postgres_up"] == 1
    assert s["outbox_relay_dead_lettered_events"] == 0
    assert s["outbox_relay_oldest_pending_age_seconds"] == 0
    assert any(k.startswith("outbox_relay_build_info{") and f'mode="{ctx.mode}"' in k for k in s), s
    if ctx.mode == "replication":
        assert "outbox_relay_replication_slot_retained_wal_bytes" in s
        wait_until(lambda: metric(relay, "outbox_relay_replication_slot_retained_wal_bytes") > 0, 30, 0.1,
                   "retained WAL measured")
    else:
        assert not any("replication_slot" in k for k in s)
    wait_until(lambda: metric(relay, "outbox_relay_kafka_up") == 1, 30, 0.1, "kafka_up 1")
    assert get(relay, "/healthz") == (200, "ok\n")
    wait_until(lambda: get(relay, "/readyz") == (200, "ready\n"), 30, 0.1, "leader ready")
    assert relay.terminate(60) == 0, relay.log_tail()


def test_readyz_leader_and_standby_both_ready(ctx):
    leader = ctx.relay(FAST_STATS, name="leader").start()
    wait_until(lambda: get(leader, "/readyz") == (200, "ready\n"), 30, 0.1, "leader ready")
    standby = ctx.relay(FAST_STATS, name="standby").start()
    assert standby.http_port() != leader.http_port()
    wait_until(lambda: metric(standby, 'outbox_relay_role{role="standby"}') == 1, 30, 0.1, "standby role")
    wait_until(lambda: get(standby, "/readyz") == (200, "ready\n"), 30, 0.1, "standby ready")
    assert metric(leader, 'outbox_relay_role{role="leader"}') == 1
    assert get(standby, "/healthz")[0] == 200
    # the leader goes: the standby takes over and says so
    assert leader.terminate(60) == 0
    wait_until(lambda: metric(standby, 'outbox_relay_role{role="leader"}') == 1, 60, 0.1, "standby leads")
    wait_until(lambda: get(standby, "/readyz") == (200, "ready\n"), 30, 0.1, "new leader ready")
    assert standby.terminate(60) == 0, standby.log_tail()


def test_readyz_503_and_a_log_line_when_the_broker_does_not_answer(ctx):
    dead = f"127.0.0.1:{free_port()}"  # nobody listens there
    relay = ctx.relay({**FAST_STATS, "kafka": {"bootstrap_servers": dead}}).start()
    wait_until(lambda: "Kafka unreachable" in relay.log_text(), 30, 0.1, "the relay logs Kafka unreachable")
    line = relay.log_grep("Kafka unreachable")
    assert dead in line and " warn " in line, line
    status, body = get(relay, "/readyz")
    assert status == 503, body
    assert body.startswith("Kafka unreachable") and body.count("\n") == 1, body
    assert metric(relay, "outbox_relay_kafka_up") == 0
    assert metric(relay, 'outbox_relay_role{role="leader"}') == 1  # PostgreSQL is fine
    assert get(relay, "/healthz") == (200, "ok\n")  # alive, only not ready
    assert relay.terminate(60) == 0, relay.log_tail()


def test_http_disabled_and_a_taken_port(ctx):
    off = ctx.relay({"http": {"enabled": False}}, name="off").start()
    wait_until(lambda: "holding the leader lock" in off.log_text(), 30, 0.1, "relay leads")
    assert "http: listening" not in off.log_text()
    assert off.terminate(60) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        clash = ctx.relay({"http": {"address": "127.0.0.1", "port": taken}}, name="clash").start()
        assert clash.wait(30) == 1
    assert f"127.0.0.1:{taken}" in clash.log_grep("cannot listen"), clash.log_tail()


@pytest.mark.chaos
def test_pending_and_oldest_age_grow_while_kafka_is_stopped(ctx):
    topic = ctx.topic(partitions=1)
    relay = ctx.relay(FAST_STATS).start()
    wait_until(lambda: get(relay, "/readyz")[0] == 200, 30, 0.1, "ready")
    ctx.kafka.stop()
    try:
        fill(ctx, topic, 25)
        wait_until(lambda: metric(relay, "outbox_relay_pending_events") == 25, 30, 0.1, "pending 25")
        first = metric(relay, "outbox_relay_oldest_pending_age_seconds")
        wait_until(lambda: metric(relay, "outbox_relay_oldest_pending_age_seconds") >= first + 1.0, 30, 0.1,
                   "oldest age grows")
        wait_until(lambda: get(relay, "/readyz")[0] == 503, 30, 0.1, "not ready without Kafka")
        assert "Kafka unreachable" in relay.log_text()
    finally:
        ctx.kafka.start()
    ctx.wait_all_published(25, 120, relay)
    wait_until(lambda: metric(relay, "outbox_relay_pending_events") == 0, 30, 0.1, "pending 0")
    assert metric(relay, "outbox_relay_oldest_pending_age_seconds") == 0
    wait_until(lambda: get(relay, "/readyz") == (200, "ready\n"), 60, 0.1, "ready again")
    assert "Kafka reachable again" in relay.log_text()
    assert relay.terminate(60) == 0, relay.log_tail()


@pytest.mark.parametrize("mode", ["replication"])
def test_the_loop_ticks_while_the_slot_creation_waits_for_an_open_transaction(ctx):
    # Creating a slot waits for every transaction open at that moment. Before, nothing ticked
    # meanwhile: after 60 s /healthz answered 503 and a liveness probe restarted the pod,
    # which started the wait again, for as long as that transaction lasted.
    other = ctx.connect(autocommit=False)
    other.execute("SELECT txid_current()")  # an xid, open until the test commits it
    relay = ctx.relay(FAST_STATS).start()
    wait_until(lambda: "still creating replication slot" in relay.log_text(), 60, 0.2,
               "the relay waits for the open transaction (logged after 10 s)", relay.assert_running)
    age = metric(relay, "outbox_relay_loop_tick_age_seconds")
    assert age is not None and age < 5, f"the loop last ticked {age} s ago"
    assert get(relay, "/healthz")[0] == 200
    other.commit()
    ctx.wait_streaming(relay)


# ----------------------------------------------------------------------------
COUNT_LIMIT = 10_000  # relay/pg/stats.h kCountLimit
LEADER_LOCK = "SELECT pg_advisory_lock(hashtext('outbox-relay'))"  # relay/pg/leader_session.cc
# Rows and index entries scans of outbox.events returned (seq scans, index and index-only scans).
READS = """
SELECT (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relid = 'outbox.events'::regclass)
     + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes WHERE relid = 'outbox.events'::regclass)
"""


def test_the_pending_gauge_reads_a_bounded_part_of_a_large_backlog(ctx):
    """Regression: the monitor counted pending rows with an exact count(*), which walks the
    whole backlog: past its statement_timeout with tens of millions of rows. Counting stops
    at COUNT_LIMIT now, and a larger backlog is estimated from the id range. Shown by what
    PostgreSQL says the monitor's queries read (not by a time): a relay standing by (the test
    holds the leader lock) reads nothing else of the table, and its statistics are flushed
    when its sessions end."""
    n = 3 * COUNT_LIMIT
    with ctx.connect() as c:
        c.execute("INSERT INTO outbox.events (topic, key, payload) "
                  "SELECT 'backlog', 'k' || g, 'x' FROM generate_series(1, %s) g", (n,))
        c.execute("ANALYZE outbox.events")
    leader = ctx.connect()
    leader.execute(LEADER_LOCK)  # the relay below stands by: it reads no row
    before = int(ctx._query(READS)[0][0])
    relay = ctx.relay({"http": {"port": 0, "stats_interval_ms": 3_600_000}}).start()
    wait_until(lambda: metric(relay, "outbox_relay_pending_events") is not None
               and metric(relay, 'outbox_relay_role{role="standby"}') == 1, 30, 0.1, "the first gauges")
    assert metric(relay, "outbox_relay_pending_events") == n  # one run of ids: the estimate is exact
    assert relay.terminate(60) == 0, relay.log_tail()
    # A backend flushes its statistics before it leaves pg_stat_activity.
    wait_until(lambda: not ctx._query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND left(application_name, 12) = 'outbox-relay'"),
               30, 0.05, "the relay's sessions gone")
    read = int(ctx._query(READS)[0][0]) - before
    ctx.note(f"pending gauge over {n} pending rows: the monitor read {read} rows and index entries")
    assert read <= COUNT_LIMIT + 10, f"the monitor read {read} rows and index entries for {n} pending rows"

    status = json.loads(ctx.relay(name="cli").command("status", "--json", timeout_s=60).stdout)
    assert status["pending"] == n and status["pending_exact"] is False, status
    text = ctx.relay(name="cli").command("status", timeout_s=60).stdout
    assert f"pending        more than {COUNT_LIMIT}, at most {n} by the id range" in text, text


def test_a_gauge_query_past_statement_timeout_is_not_postgres_unreachable(ctx):
    """Regression: a statement_timeout on the monitor's gauge query (a huge backlog, a lock)
    made /readyz say "PostgreSQL unreachable", and the monitor reconnected each time. The
    server answered: the gauges keep their last values, readiness holds. Made deterministic
    with a lock on outbox.events and the role's (here the dsn's) short statement_timeout,
    which the monitor keeps when it is below its own 5 s."""
    leader = ctx.connect()
    leader.execute(LEADER_LOCK)  # the relay below stands by: only its monitor reads the table
    short = {"postgres": {"dsn": ctx.dsn + " options='-c statement_timeout=300'"}, **FAST_STATS}
    relay = ctx.relay(short).start()
    wait_until(lambda: get(relay, "/readyz") == (200, "ready\n"), 30, 0.1, "standby ready")
    blocker = ctx.connect(autocommit=False)
    blocker.execute("LOCK TABLE outbox.events IN ACCESS EXCLUSIVE MODE")
    try:
        wait_until(lambda: "statement timeout" in relay.log_text(), 30, 0.1, "the gauge query timed out",
                   relay.assert_running)
        status, body = get(relay, "/readyz")
        assert (status, body) == (200, "ready\n"), body
        assert metric(relay, "outbox_relay_postgres_up") == 1
        line = relay.log_grep("ran past statement_timeout")
        assert " warn " in line and "unreachable" not in line, line
    finally:
        blocker.rollback()
    wait_until(lambda: "answer in time again" in relay.log_text(), 30, 0.1, "the gauges answer again",
               relay.assert_running)
    assert "PostgreSQL unreachable" not in relay.log_text(), relay.log_tail()
    assert relay.terminate(60) == 0, relay.log_tail()
