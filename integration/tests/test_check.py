"""`outbox-relay check` and the config errors a new user meets first: each failure under its
own label with its fix, the reason librdkafka knew, the server version against the range."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

from harness import Relay

SUPPORTED = (13, 18)  # relay/cli/server_version.h


def _run(relay_bin, *args):
    return subprocess.run([str(relay_bin), *args], capture_output=True, text=True, timeout=60)


def test_config_read_and_syntax_errors_name_the_file_line_and_reason(relay_bin, tmp_path):
    r = _run(relay_bin, "check", "--config", str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cannot read {tmp_path}: it is a directory, not a YAML file" in r.stderr, r.stderr
    assert "is required" not in r.stderr, r.stderr  # not read as an empty config

    missing = tmp_path / "absent.yaml"
    r = _run(relay_bin, "check", "--config", str(missing))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cannot read {missing}: No such file or directory" in r.stderr, r.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("postgres:\n  dsn: x\nkafka:\n  bootstrap_servers: [a, b\n  foo: 1\nsource:\n"
                   "  mode: polling\n")
    r = _run(relay_bin, "check", "--config", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"line 4, column 22: invalid YAML in {bad}: this [ is never closed "
            "(yaml-cpp: end of sequence flow not found)") in r.stderr, r.stderr
    assert "(document)" not in r.stderr


def test_an_invalid_topic_map_target_stops_check_and_run_with_its_key_and_line(relay_bin, tmp_path):
    """Regression: `orders: team/orders` in kafka.topic_map passed the config and `check`,
    then dead-lettered every row of that topic; it is now a configuration error (exit 2)."""
    bad = tmp_path / "topic-map.yaml"
    bad.write_text("postgres:\n  dsn: host=/nonexistent dbname=x\nkafka:\n  bootstrap_servers: b:1\n"
                   "  topic_map:\n    invoices: billing.invoices\n    orders: team/orders\n")
    for command in ("check", "run"):
        r = _run(relay_bin, command, "--config", str(bad))
        assert r.returncode == 2, f"{command}: exit {r.returncode}\n{r.stdout}{r.stderr}"
        assert f"invalid configuration {bad}:" in r.stderr, r.stderr
        assert ("line 7: kafka.topic_map.orders: must be a Kafka topic name (1-249 characters of "
                "a-z, A-Z, 0-9, '.', '_' and '-', not \".\" or \"..\"), got \"team/orders\"") in r.stderr, r.stderr
        assert "invoices" not in r.stderr, r.stderr


def test_check_labels_missing_privileges_and_gives_the_grant(ctx, tmp_path):
    role = f"it_noprivs_{uuid.uuid4().hex[:8]}"
    with ctx.connect() as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        dsn = ctx.dsn.replace("user=postgres", f"user={role}")
        relay = Relay(ctx.config({"postgres": {"dsn": dsn}}), tmp_path, binary=ctx.relay_bin,
                      name="noprivs")
        r = relay.check()
        assert r.returncode == 1, r.stdout + r.stderr
        assert "ok    postgres reachable" in r.stdout, r.stdout
        assert "FAIL  postgres reachable" not in r.stdout, r.stdout
        assert f"FAIL  privileges: role {role} lacks USAGE on schema outbox" in r.stdout, r.stdout
        assert f"fix: as the owner of schema outbox: GRANT outbox_relay TO {role};" in r.stdout
        assert "ok    kafka reachable" in r.stdout, r.stdout

        with ctx.connect() as c:  # the fix it gave, verbatim
            c.execute(f'GRANT outbox_relay TO "{role}"')
        r = relay.check()
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"ok    privileges: role {role} can read and mark outbox.events" in r.stdout
    finally:
        with ctx.connect() as c:
            c.execute(f'DROP OWNED BY "{role}"')
            c.execute(f'DROP ROLE "{role}"')


def test_check_says_what_librdkafka_knew_when_kafka_refuses(ctx, tmp_path):
    with socket.socket() as s:  # a port nobody listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    relay = Relay(ctx.config({"kafka": {"bootstrap_servers": f"127.0.0.1:{port}"}}), tmp_path,
                  binary=ctx.relay_bin, name="nokafka")
    r = relay.check()
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("FAIL  kafka reachable"))
    assert "Connection refused" in line, r.stdout
    assert f"127.0.0.1:{port}" in line, r.stdout
    assert "fix: check kafka.bootstrap_servers" in r.stdout, r.stdout
    assert "ok    privileges" in r.stdout, r.stdout  # PostgreSQL's checks are unaffected


def test_check_reports_the_server_version_against_the_supported_range(ctx):
    version, num = ctx._query("SELECT current_setting('server_version'), "
                              "current_setting('server_version_num')::int")[0]
    assert SUPPORTED[0] <= num // 10000 <= SUPPORTED[1], f"the suite runs on {version}"
    # CI's run on another major version (OUTBOX_PG_BINDIR) says which: proof it is not 15 again.
    if os.environ.get("OUTBOX_IT_PG_MAJOR"):
        assert num // 10000 == int(os.environ["OUTBOX_IT_PG_MAJOR"]), version
    r = ctx.migrate_relay.check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"ok    postgres version: {version} (supported: {SUPPORTED[0]} to {SUPPORTED[1]})"
            in r.stdout), r.stdout
