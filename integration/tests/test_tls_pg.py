"""TLS and SCRAM to PostgreSQL on a server of the test's own (harness/tls.py: ssl=on, every
role but the harness's postgres admitted only over TLS with a SCRAM password):
sslmode=verify-full works in both source modes and every connection of the relay, the
replication one included, is encrypted; a certificate for another host, an untrusted CA, a
wrong password and a plaintext attempt are each refused with their cause; a dsn weaker than
verify-full to a host that is not loopback is refused before any connection unless
postgres.allow_weak_tls is set.

Costs about 20 s in CI (server start ~2 s).
"""

from __future__ import annotations

import re
import secrets

import pytest

from harness import enqueue, wait_until


def _login(tls_db, replication: bool = False) -> tuple[str, str]:
    role, password = f"r_{tls_db.name}"[:63], secrets.token_hex(12)
    tls_db.pg.create_login(role, password, replication=replication)
    return role, password


def _rows(tls_db, topic: str, n: int) -> None:
    with tls_db.connect() as c:
        for i in range(n):
            enqueue(c, topic, f"k{i % 3}", f"event {i}".encode())


def _relay(tls_db, dsn, kafka, tmp_path, name, password=None, **extra):
    from harness import Relay

    cfg = tls_db.config(dsn, kafka.bootstrap, **extra)
    if password is not None:
        secret = tmp_path / f"{name}.password"
        secret.write_text(password + "\n")
        cfg["postgres"]["password_file"] = str(secret)
    return Relay(cfg, tmp_path, tls_db.relay_bin, name)


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_verify_full_works_and_every_connection_is_tls(tls_db, kafka, tmp_path, mode):
    role, password = _login(tls_db, replication=mode == "replication")
    topic = kafka.create_topic(f"it.{tls_db.name}", partitions=1)
    source = {"mode": mode, "polling": {"batch_size": 100, "interval_ms": 100}}
    if mode == "replication":
        # The role does not own outbox.events: the publication is made once by its owner.
        with tls_db.connect() as c:
            c.execute("CREATE PUBLICATION outbox_relay FOR TABLE outbox.events WITH (publish = 'insert')")
        source["replication"] = {"slot_name": f"s_{tls_db.name}"[:63], "create_publication": False}
    relay = _relay(tls_db, tls_db.pg.tls_dsn(tls_db.name, role), kafka, tmp_path, "relay", password, source=source)
    r = relay.check()
    assert r.returncode == 0, r.stdout + r.stderr
    _rows(tls_db, topic, 10)
    relay.start()
    try:
        wait_until(lambda: tls_db.counts() == (10, 10), 60, 0.1, "10 rows published", lambda: relay.assert_running())
        with tls_db.connect() as c:
            sessions = c.execute(
                "SELECT a.backend_type, s.ssl, s.version FROM pg_stat_activity a "
                "JOIN pg_stat_ssl s USING (pid) WHERE a.usename = %s", (role,)
            ).fetchall()
            scram = c.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s",
                              (role,)).fetchone()[0]
    finally:
        assert relay.terminate() == 0
    assert sessions and all(ssl for _, ssl, _ in sessions), sessions
    if mode == "replication":
        assert any(t == "walsender" for t, _, _ in sessions), f"no replication connection among {sessions}"
    assert scram, "the relay's role does not have a SCRAM password"
    assert len(kafka.consume_all(topic, 10, timeout_s=30, idle_s=0.5)) == 10


def test_wrong_host_untrusted_ca_wrong_password_and_plaintext_are_refused(tls_db, kafka, tmp_path):
    role, password = _login(tls_db)
    pg = tls_db.pg
    cases = {
        # The certificate names localhost/127.0.0.1; the dsn asks for another host (reached at
        # 127.0.0.1 through hostaddr).
        "wrong_host": (pg.tls_dsn(tls_db.name, role, host="wrong-host.invalid", extra="hostaddr=127.0.0.1"),
                       password, r'server certificate for "localhost" \(and 1 other name\) does not match host name '
                                 r'"wrong-host.invalid"'),
        "untrusted_ca": (pg.tls_dsn(tls_db.name, role, rootcert=pg.certs.other_ca), password,
                         r"certificate verify failed"),
        "wrong_password": (pg.tls_dsn(tls_db.name, role), "not-the-password",
                           rf'password authentication failed for user "{role}"'),
        # Loopback may go without TLS as far as the relay is concerned; this server says no.
        "plaintext": (pg.tls_dsn(tls_db.name, role, sslmode="disable"), password,
                      rf'pg_hba.conf rejects connection for host "127.0.0.1", user "{role}", '
                      rf'database "{tls_db.name}", no encryption'),
    }  # fmt: skip
    _rows(tls_db, "t", 3)
    for name, (dsn, pw, cause) in cases.items():
        relay = _relay(tls_db, dsn, kafka, tmp_path, name, pw)
        r = relay.check()
        assert r.returncode == 1, f"{name}:\n{r.stdout}{r.stderr}"
        assert re.search(r"FAIL\s+postgres reachable: .*" + cause, r.stdout), f"{name}:\n{r.stdout}{r.stderr}"
        r = relay.command("migrate")
        assert r.returncode == 1 and re.search(cause, r.stderr), f"{name}:\n{r.stdout}{r.stderr}"
        before = len(relay.log_text())  # check and migrate wrote theirs: only run's from here
        relay.start()
        try:
            wait_until(lambda: re.search(cause, relay.log_text()[before:]), 30, 0.1, f"{name}: /{cause}/ in the log",
                       lambda: relay.assert_running("(PostgreSQL refusing is retried, never an exit)"))
        finally:
            assert relay.terminate() == 0
    assert tls_db.counts() == (3, 0)


@pytest.mark.parametrize("mode", ["polling", "replication"])
def test_weak_dsn_to_a_remote_host_is_refused_unless_allowed(tls_db, kafka, tmp_path, mode):
    role, password = _login(tls_db, replication=True)
    # Two hosts: the second is remote (never reached), so sslmode=require is refused. With the
    # allow key the relay connects to the first, without checking the certificate.
    dsn = (f"host=localhost,db.example.invalid hostaddr=127.0.0.1, port={tls_db.pg.port} "
           f"dbname={tls_db.name} user={role} sslmode=require")
    source = {"mode": mode}
    if mode == "replication":
        with tls_db.connect() as c:
            c.execute("CREATE PUBLICATION outbox_relay FOR TABLE outbox.events WITH (publish = 'insert')")
        source["replication"] = {"slot_name": f"s_{tls_db.name}"[:63], "create_publication": False}
    refused = _relay(tls_db, dsn, kafka, tmp_path, "refused", password, source=source)
    for r in (refused.check(), refused.command("migrate"), refused.command("run", timeout_s=30)):
        assert r.returncode == 2, r.stdout + r.stderr
        assert re.search(
            r"postgres\.dsn: sslmode=require to host db\.example\.invalid does not check the server's certificate\. "
            r"Use sslmode=verify-full .*postgres\.allow_weak_tls: true",
            r.stderr,
        ), r.stderr
    topic = kafka.create_topic(f"it.{tls_db.name}", partitions=1)
    _rows(tls_db, topic, 5)
    allowed = _relay(tls_db, dsn, kafka, tmp_path, "allowed", password, source=source,
                     postgres={"dsn": dsn, "allow_weak_tls": True})
    r = allowed.check()
    assert r.returncode == 0, r.stdout + r.stderr
    allowed.start()
    try:
        wait_until(lambda: tls_db.counts() == (5, 5), 60, 0.1, "5 rows published", lambda: allowed.assert_running())
    finally:
        assert allowed.terminate() == 0
