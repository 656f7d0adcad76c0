"""Secrets never exposed: the relay runs (`run`, `check`, `migrate`) at trace level, with
librdkafka's debug output on, with a known secret in every place one can be given:

  PostgreSQL password: in the dsn, in postgres.password_file, in PGPASSWORD
  Kafka sasl.password: in kafka.properties, in kafka.secret_files, in ${VAR}

and, while each good relay runs, `status` (text and --json) and its HTTP endpoints
(GET /metrics, /healthz, /readyz), whose answers are searched too;

through success (rows published over SASL_SSL and verify-full) and through failures (wrong
passwords everywhere, PostgreSQL and Kafka unreachable); then every output (stdout, stderr,
the log) is searched for every secret, the right and the wrong ones. Each scenario must also
show it got as far as using its secrets (published, or refused for the expected reason), so
that a relay that never tried cannot pass.

Costs about 30 s in CI (the TLS servers are shared with test_tls_*.py).
"""

from __future__ import annotations

import re
import secrets
import socket
import threading
import urllib.error
import urllib.request

from harness import Relay, enqueue, wait_until
from harness.tls import SCRAM


def _secret(label: str) -> str:
    return f"S3CR{label}{secrets.token_hex(8)}"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:  # /readyz answers 503 with its reason
        return e.code, e.read().decode(errors="replace")


def _status_and_http(relay: Relay) -> str:
    """What `status`, `status --json` and the running relay's endpoints answer (the
    commands' output also lands in the relay's log)."""
    text = ""
    for args in ((), ("--json",)):
        r = relay.command("status", *args)
        assert r.returncode == 0, f"{relay.name} status {args}: {r.stdout}{r.stderr}"
        text += r.stdout + r.stderr
    assert "pending" in text, text  # it read PostgreSQL
    port = relay.http_port()
    status, metrics = _http_get(port, "/metrics")
    assert status == 200 and "outbox_relay_" in metrics, (status, metrics[:500])
    for path in ("/healthz", "/readyz"):
        status, body = wait_until(lambda p=path: (lambda r: r if r[0] == 200 else None)(_http_get(port, p)),
                                  30, 0.1, f"{relay.name} {path} 200", lambda: relay.assert_running())
        text += body
    return text + metrics


def test_no_secret_in_any_output_through_success_and_failure(tls_db, tls_kafka, tmp_path):
    pg, db = tls_db.pg, tls_db.name
    known: dict[str, str] = {}  # label -> secret value (every one is searched for)

    def pg_role(label: str) -> tuple[str, str]:
        role, pw = f"{label}_{db}"[:63], _secret(label)
        pg.create_login(role, pw)
        known[label] = pw
        return role, pw

    def kafka_user(label: str) -> tuple[str, str]:
        user, pw = f"{label}-{db}", _secret(label)
        tls_kafka.add_scram_user(user, pw)
        known[label] = pw
        return user, pw

    def wrong(label: str) -> str:
        known[label] = _secret(label)
        return known[label]

    pg_dsn_role, pg_dsn_pw = pg_role("pgdsn")
    pg_file_role, pg_file_pw = pg_role("pgfile")
    pg_env_role, pg_env_pw = pg_role("pgenv")
    k_value_user, k_value_pw = kafka_user("kvalue")
    k_file_user, k_file_pw = kafka_user("kfile")
    k_env_user, k_env_pw = kafka_user("kenv")

    topic = tls_kafka.create_topic(f"sec.{db}", partitions=1)

    def write_file(name: str, value: str) -> str:
        p = tmp_path / name
        p.write_text(value + "\n")
        return str(p)

    def scenario(name, *, role, pg_pw_in=None, pg_pw=None, user, k_pw_in, k_pw, pg_port=None,
                 bootstrap=None, debug="security,broker,protocol"):
        """A relay whose PostgreSQL password is given `pg_pw_in` (dsn/file/env) and Kafka
        password `k_pw_in` (value/file/env)."""
        env = {}
        dsn = pg.tls_dsn(db, role)
        if pg_port:
            dsn = dsn.replace(f"port={pg.port}", f"port={pg_port}")
        postgres = {"dsn": dsn}
        if pg_pw_in == "dsn":
            postgres["dsn"] = f"{dsn} password={pg_pw}"
        elif pg_pw_in == "file":
            postgres["password_file"] = write_file(f"{name}.pgpass", pg_pw)
        elif pg_pw_in == "env":
            env["PGPASSWORD"] = pg_pw
        props = {**tls_kafka.client_properties("SASL_SSL", user, "x"), "debug": debug, "linger.ms": "5"}
        props.pop("sasl.password")
        kafka = {"bootstrap_servers": bootstrap or props.pop("bootstrap.servers"), "properties": props}
        props.pop("bootstrap.servers", None)
        if k_pw_in == "value":
            props["sasl.password"] = k_pw
        elif k_pw_in == "file":
            kafka["secret_files"] = {"sasl.password": write_file(f"{name}.saslpass", k_pw)}
        elif k_pw_in == "env":
            props["sasl.password"] = "${RELAY_SASL_PASSWORD}"
            env["RELAY_SASL_PASSWORD"] = k_pw
        cfg = tls_db.config(postgres["dsn"], kafka["bootstrap_servers"], log={"level": "trace"})
        cfg["postgres"], cfg["kafka"] = postgres, kafka
        cfg["relay"]["shutdown_timeout_ms"] = 1000
        return Relay(cfg, tmp_path, tls_db.relay_bin, name, env=env)

    relays: list[Relay] = []
    answers: dict[str, str] = {}  # relay name -> what status and the HTTP endpoints said

    # --- success, one way of giving secrets after the other (the relays share one database).
    good = [
        scenario("good_dsn_value", role=pg_dsn_role, pg_pw_in="dsn", pg_pw=pg_dsn_pw, user=k_value_user,
                 k_pw_in="value", k_pw=k_value_pw),
        scenario("good_file_file", role=pg_file_role, pg_pw_in="file", pg_pw=pg_file_pw, user=k_file_user,
                 k_pw_in="file", k_pw=k_file_pw, debug="all"),
        scenario("good_env_env", role=pg_env_role, pg_pw_in="env", pg_pw=pg_env_pw, user=k_env_user,
                 k_pw_in="env", k_pw=k_env_pw),
    ]  # fmt: skip
    for i, relay in enumerate(good):
        relays.append(relay)
        # The relay's role may not migrate (least privilege): it connects and, the schema being
        # up to date, has nothing to apply (were there something, it would be refused).
        r = relay.command("migrate")
        assert r.returncode == 0 and "schema up to date (0 applied now" in r.stdout, f"{relay.name}: {r.stderr}"
        r = relay.check()
        assert r.returncode == 0, f"{relay.name}: {r.stdout}{r.stderr}"
        with tls_db.connect() as c:
            enqueue(c, topic, "k", f"event {i}".encode())
        relay.start()
        try:
            wait_until(lambda: tls_db.counts()[1] == i + 1, 60, 0.1, f"{relay.name} publishing",
                       lambda: relay.assert_running())
            answers[relay.name] = _status_and_http(relay)
        finally:
            assert relay.terminate() == 0

    # --- failures: wrong passwords in each place, servers that do not answer.
    failing = {
        "wrong_pg_dsn": (scenario("wrong_pg_dsn", role=pg_dsn_role, pg_pw_in="dsn", pg_pw=wrong("wpgdsn"),
                                  user=k_value_user, k_pw_in="value", k_pw=wrong("wkvalue")),
                         "password authentication failed"),
        "wrong_pg_file": (scenario("wrong_pg_file", role=pg_file_role, pg_pw_in="file", pg_pw=wrong("wpgfile"),
                                   user=k_file_user, k_pw_in="file", k_pw=wrong("wkfile")),
                          "password authentication failed"),
        "wrong_pg_env": (scenario("wrong_pg_env", role=pg_env_role, pg_pw_in="env", pg_pw=wrong("wpgenv"),
                                  user=k_env_user, k_pw_in="env", k_pw=wrong("wkenv")),
                         "password authentication failed"),
        # PostgreSQL fine, so this one leads and talks to Kafka: refused with the wrong password.
        "wrong_kafka": (scenario("wrong_kafka", role=pg_dsn_role, pg_pw_in="dsn", pg_pw=pg_dsn_pw,
                                 user=k_value_user, k_pw_in="value", k_pw=wrong("wkafka"), debug="all"),
                        "SASL authentication error"),
        "unreachable": (scenario("unreachable", role=pg_file_role, pg_pw_in="file", pg_pw=pg_file_pw,
                                 user=k_file_user, k_pw_in="file", k_pw=k_file_pw, pg_port=_closed_port(),
                                 bootstrap=f"127.0.0.1:{_closed_port()}", debug="all"),
                        "Connection refused"),
    }  # fmt: skip
    with tls_db.connect() as c:
        enqueue(c, topic, "k", b"pending")  # something for wrong_kafka to try to send
    results = {}
    threads = []
    for name, (relay, _) in failing.items():
        relays.append(relay)
        for cmd in ("check", "migrate"):
            t = threading.Thread(target=lambda r=relay, c=cmd: results.__setitem__((r.name, c), r.command(c)))
            threads.append(t)
            t.start()
    for t in threads:
        t.join(120)
    for name, (relay, cause) in failing.items():
        for cmd in ("check", "migrate"):
            r = results[(name, cmd)]
            if not (name == "wrong_kafka" and cmd == "migrate"):  # migrate needs no Kafka
                assert r.returncode == 1, f"{name} {cmd}: {r.stdout}{r.stderr}"
        relay.start()
    for name, (relay, cause) in failing.items():
        wait_until(lambda: re.search(cause, relay.log_text().split("start #1")[-1], re.IGNORECASE), 60, 0.1,
                   f"{name}: /{cause}/ in run's log", lambda: relay.assert_running())
    for relay, _ in failing.values():
        assert relay.terminate() == 0

    # --- no output anywhere holds a secret.
    assert len(known) == 13  # 6 right, 7 wrong
    leaks = []
    for relay in relays:
        text = relay.log_text()  # run's stdout+stderr, and every command's stdout and stderr
        text += answers.get(relay.name, "")
        for label, value in known.items():
            if value in text:
                leaks.append(f"{relay.name}: {label} at: {text[max(0, text.index(value) - 150):text.index(value) + 40]!r}")
    assert not leaks, "\n".join(leaks)
    # The secrets were really there to leak: in the config files and environments given.
    given = "".join(p.read_text() for p in tmp_path.iterdir() if p.suffix in (".yaml", ".pgpass", ".saslpass"))
    given += "".join(r.env.get("PGPASSWORD", "") + r.env.get("RELAY_SASL_PASSWORD", "") for r in relays)
    assert all(v in given for v in known.values())
    total = sum(len(r.log_text()) for r in relays)
    assert total > 100_000, f"only {total} bytes of output: trace and librdkafka debug output missing?"
    assert SCRAM in "".join(r.log_text() for r in relays)
