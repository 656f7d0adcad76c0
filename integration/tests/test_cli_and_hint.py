"""The relay's edges a user meets first: check, migrate, poison rows, the NOTIFY hint."""

from __future__ import annotations

import subprocess

from harness import Relay, enqueue, wait_until


def test_notify_hint_wakes_an_idle_relay_long_before_its_interval(ctx):
    topic = ctx.topic()
    # With a 60 s interval only the NOTIFY hint can bring an event out within seconds.
    relay = ctx.relay({"source": {"polling": {"interval_ms": 60000}}}).start()
    reader = ctx.reader(topic)
    with ctx.connect() as c:
        enqueue(c, topic, "k", b"first")
    assert reader.wait_for(lambda rs: len(rs) >= 1, 30), relay.log_tail()
    # Once the relay has re-armed the hint it is idle, waiting: the next writer must wake it.
    wait_until(lambda: ctx._query("SELECT NOT is_called FROM outbox.relay_wakeup_seq")[0][0], 30, 0.02,
               "the relay re-armed the hint")
    with ctx.connect() as c:
        enqueue(c, topic, "k", b"second")
    assert reader.wait_for(lambda rs: len(rs) >= 2, 15), (
        "the hint did not wake the relay (its interval is 60 s)\n" + relay.log_tail())
    assert [r.value for r in reader.records] == [b"first", b"second"]


def test_poison_rows_are_dead_lettered_with_their_reason_and_block_nothing(ctx):
    topic = ctx.topic()
    relay = ctx.relay({"kafka": {"properties": {"message.max.bytes": "20000"}},
                       "relay": {"max_attempts": 2}}).start()
    with ctx.connect() as c:
        # Services cannot enqueue these (enqueue refuses them); a direct INSERT can.
        c.execute("INSERT INTO outbox.events (topic, key, payload) VALUES ('bad topic!', 'k', 'x')")
        c.execute("INSERT INTO outbox.events (topic, key, payload, headers) "
                  "VALUES (%s, 'k', 'x', '{\"n\": 1}')", (topic,))
        c.execute("INSERT INTO outbox.events (topic, key, payload) VALUES (%s, 'k', %s)",
                  (topic, b"y" * 50000))
        enqueue(c, topic, "k", b"good")
    reader = ctx.reader(topic)
    assert reader.wait_for(lambda rs: any(r.value == b"good" for r in rs), 60), relay.log_tail()

    def dead():
        return ctx._query("SELECT topic, last_error FROM outbox.events "
                          "WHERE dead_lettered_at IS NOT NULL ORDER BY id")

    rows = wait_until(lambda: len(dead()) == 3 and dead(), 30, 0.05, "3 rows dead-lettered")
    assert "invalid Kafka topic name" in rows[0][1]
    assert 'header "n" must be a string' in rows[1][1]
    assert "too large" in rows[2][1].lower(), rows[2][1]
    assert [r.value for r in reader.records] == [b"good"]  # none of the poison reached Kafka
    assert relay.running, "the relay must carry on after poison rows"


def test_check_names_a_missing_schema_and_passes_once_migrated(ctx, tmp_path):
    db = ctx.db + "_bare"
    dsn = ctx.pg.create_database(db)
    try:
        relay = Relay(ctx.config({"postgres": {"dsn": dsn}}), tmp_path, binary=ctx.relay_bin,
                      name="bare")
        r = relay.check()
        assert r.returncode == 1, r.stdout + r.stderr
        assert "ok    postgres reachable" in r.stdout, r.stdout
        assert "FAIL  schema" in r.stdout and "outbox-relay migrate" in r.stdout, r.stdout
        assert "ok    kafka reachable" in r.stdout, r.stdout

        assert relay.migrate().returncode == 0
        r = relay.check()
        assert r.returncode == 0, r.stdout + r.stderr
        assert "all checks passed" in r.stdout
        assert "FAIL" not in r.stdout
    finally:
        ctx.pg.drop_database(db)


def test_migrate_is_safe_twice_and_from_two_processes_at_once(ctx, tmp_path):
    db = ctx.db + "_mig"
    dsn = ctx.pg.create_database(db)
    try:
        relay = Relay(ctx.config({"postgres": {"dsn": dsn}}), tmp_path, binary=ctx.relay_bin,
                      name="mig")
        cmd = [str(ctx.relay_bin), "migrate", "--config", str(relay.config_path)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, out + err
        applied = sum(out.count("applied  ") for out, _ in outs)
        migrations = sorted((ctx.relay_bin.parent.parent / "schema").glob("*.sql"))
        assert applied == len(migrations), outs  # each migration applied by exactly one of the two
        again = relay.migrate()
        assert again.returncode == 0 and "0 applied now" in again.stdout, again.stdout
        with ctx.pg.connect(db) as c:
            versions = [v for (v,) in c.execute(
                "SELECT version FROM outbox.schema_migrations ORDER BY 1").fetchall()]
        assert versions == [int(m.name[:4]) for m in migrations]
    finally:
        ctx.pg.drop_database(db)


def test_bad_log_level_is_refused_and_levels_print_as_configured(ctx):
    relay = ctx.relay()
    bad = relay.command("check", "--log-level", "bogus")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "--log-level must be one of" in bad.stderr and "bogus" in bad.stderr
    # An unreachable PostgreSQL: a warn line, one line per record (libpq's message has two).
    down = ctx.relay({"postgres": {"dsn": "host=127.0.0.1 port=1 dbname=x connect_timeout=2"}},
                     name="down").start()
    wait_until(lambda: " warn  [core] PostgreSQL:" in down.log_text(), 30, 0.1, "a warn line")
    lines = [ln for ln in down.log_text().splitlines() if "PostgreSQL:" in ln]
    assert all(ln.startswith("20") for ln in lines), lines[:3]  # no continuation lines
    assert "warning" not in down.log_text()
