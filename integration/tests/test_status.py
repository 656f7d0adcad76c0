"""`outbox-relay status` on real servers, both source modes: backlog, oldest pending age,
dead-lettered rows, the session holding the leader lock, and the replication slot; as text
and as --json. Read-only: it must show what the table and the server show."""

from __future__ import annotations

import json

import pytest

from harness import enqueue, wait_until


def status_json(relay) -> dict:
    r = relay.command("status", "--json", timeout_s=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def status_text(relay) -> str:
    r = relay.command("status", timeout_s=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_status_text_and_json_follow_the_outbox_and_the_leader(ctx):
    topic = ctx.topic(partitions=1)
    with ctx.connect() as c:
        for i in range(5):
            enqueue(c, topic, f"k{i}", b"x")
        # a Kafka topic name may not contain spaces: dead-lettered once the relay runs
        enqueue(c, "not a valid topic", "k", b"x")
        (db_age,) = c.execute("SELECT extract(epoch FROM now() - min(created_at))::float8 "
                              "FROM outbox.events").fetchone()
    cli = ctx.relay(name="cli")  # never started: only runs status

    before = status_json(cli)
    assert before["mode"] == ctx.mode
    assert before["pending"] == 6 and before["dead_lettered"] == 0, before
    assert before["oldest_pending_age_seconds"] >= db_age >= 0, before
    assert before["leader"] is None, before
    if ctx.mode == "replication":
        assert before["slot"] == {"name": ctx.slot_name, "exists": False}, before
    else:
        assert before["slot"] is None
    text = status_text(cli)
    assert "pending        6 (oldest " in text, text
    assert "leader         none" in text, text
    assert ("slot           " + ctx.slot_name + " missing") in text if ctx.mode == "replication" else "slot" not in text

    relay = ctx.relay().start()
    wait_until(lambda: ctx.counts()[1] == 5, 60, 0.1, "5 rows marked", check=relay.assert_running)
    wait_until(lambda: status_json(cli)["dead_lettered"] == 1, 60, 0.2, "one row dead-lettered")
    now = status_json(cli)
    assert now["pending"] == 0 and now["oldest_pending_age_seconds"] == 0, now
    leader = now["leader"]
    assert leader is not None, now
    with ctx.connect() as c:
        row = c.execute("SELECT datname, backend_type FROM pg_stat_activity WHERE pid = %s",
                        (leader["pid"],)).fetchone()
        mine = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert row == (ctx.db, "client backend"), (row, leader)
    assert leader["pid"] != mine
    assert leader["application_name"] == "outbox-relay", leader
    assert leader["client_addr"] in ("127.0.0.1", "::1", "local"), leader
    text = status_text(cli)
    assert f"leader         pid {leader['pid']}, " in text, text
    assert "dead-lettered  1" in text, text
    if ctx.mode == "replication":
        slot = now["slot"]
        assert slot["exists"] and slot["active"] and slot["wal_status"] in ("reserved", "extended"), slot
        assert isinstance(slot["active_pid"], int) and slot["confirmed_lsn"], slot
        assert slot["retained_wal_bytes"] >= 0 and slot["confirmed_lag_bytes"] >= 0, slot
        assert f"slot           {ctx.slot_name}: wal_status " in text and "active (PID " in text, text

    assert relay.terminate(60) == 0, relay.log_tail()
    wait_until(lambda: status_json(cli)["leader"] is None, 30, 0.1, "no leader after the relay stopped")
    if ctx.mode == "replication":
        wait_until(lambda: not status_json(cli)["slot"]["active"], 30, 0.1, "slot released")


def test_status_exits_1_when_postgres_cannot_be_read(ctx):
    cli = ctx.relay({"postgres": {"dsn": "host=127.0.0.1 port=1 dbname=x connect_timeout=2"}}, name="down")
    r = cli.command("status", timeout_s=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "status: PostgreSQL" in r.stderr and "password" not in r.stderr


def test_each_command_has_its_own_help(relay_bin):
    import subprocess

    def run(*args):
        return subprocess.run([str(relay_bin), *args], capture_output=True, text=True, timeout=30)

    top = run("--help")
    assert top.returncode == 0
    for command in ("run", "migrate", "check", "status", "replay", "audit"):
        assert f"\n  {command} " in top.stdout, top.stdout
    own = {"migrate": "--dsn", "status": "--json", "replay": "--all-dead-lettered", "audit": "--since"}
    for command, option in own.items():
        r = run(command, "--help")
        assert r.returncode == 0 and option in r.stdout and "--config" in r.stdout, (command, r.stdout)
        others = set(own.values()) - {option} - ({"--json"} if command in ("status", "audit") else set())
        assert not any(o in r.stdout for o in others), (command, r.stdout)
    bad = run("status", "--config", "x.yaml", "--bogus")
    assert bad.returncode == 2 and "--bogus" in bad.stderr, bad.stderr
    none = run("--config", "x.yaml")
    assert none.returncode == 2 and "no command given" in none.stderr, none.stderr


@pytest.mark.parametrize("mode", ["polling"])
def test_the_backlog_counts_stop_at_their_limit_however_large_the_backlog(ctx):
    """Regression: the backlog figures of `status` and of the metrics (pg/stats.cc) count
    pending rows up to a limit through the pending index in id order; on a table never
    analyzed (after a burst) PostgreSQL planned that count as a bitmap scan of every pending
    row and a sort, reading each row's table page: 250-600 ms a call with 1,000,000 pending
    rows. The plan (auto_explain, in this database only) must read no more pending rows than
    the limit (10,000) and one."""
    import re

    pending = 1_000_000
    with ctx.connect() as c:
        c.execute("INSERT INTO outbox.events (topic) SELECT 't' FROM generate_series(1, %s)", (pending,))
        for k, v in {"session_preload_libraries": "auto_explain", "auto_explain.log_min_duration": "0",
                     "auto_explain.log_analyze": "on", "auto_explain.log_nested_statements": "on"}.items():
            c.execute(f'ALTER DATABASE "{ctx.db}" SET {k} = {v}')
    log_from = len(ctx.pg.log_text())
    assert status_json(ctx.relay(name="cli"))["pending"] > 10_000
    plans = [entry for entry in ctx.pg.log_text()[log_from:].split("LOG:  duration:")
             if "WITH oldest AS" in entry]
    assert plans, "no plan of the backlog query in PostgreSQL's log (auto_explain)"
    for plan in plans:
        read = [int(n) for n in re.findall(r"on events \S+ .*?actual time=\S+ rows=(\d+)", plan)]
        assert read and max(read) <= 10_001, f"the backlog query read {max(read or [0])} rows:\n{plan}"
