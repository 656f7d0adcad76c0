"""A PostgreSQL password rotated while rows flow: the relay reads postgres.password_file again
at each new connection (docs/operations/secrets.md), so it reconnects with the new password
and never needs a restart.

On a PostgreSQL that asks every role but the harness's admin for a SCRAM password (tls_pg),
a relay logs in as a role of its own with its password in a file and publishes under load
(delivery.guarantee: exactly_once, so the audit can ask for every row exactly once); the
role's password is changed (ALTER ROLE), the file rewritten as a mounted Secret is (a new
file renamed over the old one), every backend of the role terminated (pg_terminate_backend:
the leader session, the replication connection, the others). The same relay process must
reconnect with the new password and publish every row exactly once.

Both source modes; about 6 s each in CI (shared TLS PostgreSQL, plain Kafka).
"""

from __future__ import annotations

import os
import secrets

import psycopg
import pytest
from psycopg import sql

from harness import Relay, Writers, audit, setup_keys, wait_until
from harness.checks import assert_no_loss, explain
from harness.faults import read_topic

KEYS = [f"key-{i:02d}" for i in range(20)]
TOTAL = 3000


def _write_secret(path, value: str) -> None:
    """As the kubelet updates a mounted Secret: the new content appears at once, whole."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def _backends(pg, db: str, role: str) -> set[int]:
    """Pids of the role's sessions and walsenders on `db`."""
    with pg.connect("postgres", autocommit=True) as c:
        return {pid for (pid,) in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND (datname = %s OR backend_type = 'walsender')",
            (role, db)).fetchall()}  # fmt: skip


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_password_rotated_under_load_is_read_again_at_reconnect(tls_db, kafka, tmp_path, mode):
    """Regression: postgres.password_file was read once at start, so after a rotation every
    reconnect failed with "password authentication failed" until the relay was restarted."""
    pg, db = tls_db.pg, tls_db.name
    role = f"rot_{db}"[:63]
    old_pw, new_pw = secrets.token_hex(12), secrets.token_hex(12)
    pg.create_login(role, old_pw, replication=mode == "replication")
    pw_file = tmp_path / "pg-password"
    _write_secret(pw_file, old_pw)

    topic = kafka.create_topic(f"it.rotation.{db}", partitions=3)
    with tls_db.connect(autocommit=False) as c:
        setup_keys(c, KEYS)
    cfg = tls_db.config(pg.tls_dsn(db, role), kafka.bootstrap,
                        delivery={"guarantee": "exactly_once", "checkpoint_topic": f"it.rotation-cp.{db}",
                                  # the role may not read the system identifier the default uses
                                  "transactional_id": f"it-rotation-{db}"})
    cfg["postgres"]["password_file"] = str(pw_file)
    if mode == "replication":
        slot = f"rot_{db}"[:63]
        with tls_db.connect() as c:  # made by the table's owner: the relay's role may not
            c.execute("CREATE PUBLICATION outbox_relay FOR TABLE outbox.events WITH (publish = 'insert')")
        cfg["source"] = {"mode": "replication", "replication": {"slot_name": slot, "create_publication": False}}
    relay = Relay(cfg, tmp_path, tls_db.relay_bin, f"rotation-{mode}").start()
    writers = Writers(lambda: pg.connect(db, autocommit=True), topic, KEYS, TOTAL, threads=2)
    try:
        wait_until(lambda: "delivery: exactly_once" in relay.log_text(), 60, 0.05, "the relay up",
                   lambda: relay.assert_running())
        pid = relay.pid
        writers.start()
        wait_until(lambda: tls_db.counts()[1] >= TOTAL // 4, 60, 0.05, "a quarter of the rows published",
                   lambda: relay.assert_running("before the rotation"))

        # The rotation: the server takes only the new password, the file holds it.
        with pg.connect("postgres", autocommit=True) as c:
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(new_pw)))
        _write_secret(pw_file, new_pw)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.tls_dsn(db, role) + f" password={old_pw}").close()
        old = _backends(pg, db, role)
        assert old, "the relay has no session to terminate"
        with pg.connect("postgres", autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (sorted(old),))

        # The same process reconnects with the new password and goes on.
        wait_until(lambda: _backends(pg, db, role) - old, 30, 0.05,
                   "the relay back in PostgreSQL with the new password",
                   lambda: relay.assert_running("after the rotation"))
        writers.join(60)
        wait_until(lambda: (lambda t, m: t == TOTAL and m == t)(*tls_db.counts()), 30, 0.1,
                   f"{TOTAL} rows marked published", lambda: relay.assert_running("draining"))
        assert relay.pid == pid, "the relay was restarted"
        assert relay.running
        assert relay.terminate() == 0, relay.log_tail()
    finally:
        writers.stop()
        relay.stop_quietly()

    log = relay.log_text()
    assert "holds a new password; connecting with it" in log, relay.log_tail()
    assert old_pw not in log and new_pw not in log
    with tls_db.connect() as c:
        from harness.audit import fetch_rows

        rows = fetch_rows(c)
    rep = audit(rows, read_topic(kafka, topic, 60))
    assert rep.rows == TOTAL and rep.records == TOTAL, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
