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
        assert "ok    read floor: on (reads start above the rows already marked)" in r.stdout, r.stdout
        with ctx.connect() as c:
            c.execute("ALTER TABLE outbox.events ALTER COLUMN id SET CACHE 20")
        r = relay.check()
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ok    read floor: off: outbox.events.id must be" in r.stdout, r.stdout
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
    """The line says of each mode whether it supports the server, and that CI tests this
    major version (every run of this file is such a test: 15, and 16, 17, 18 in test-all.sh)."""
    version, num = ctx._query("SELECT current_setting('server_version'), "
                              "current_setting('server_version_num')::int")[0]
    assert SUPPORTED[0] <= num // 10000 <= SUPPORTED[1], f"the suite runs on {version}"
    # CI's run on another major version (OUTBOX_PG_BINDIR) says which: proof it is not 15 again.
    if os.environ.get("OUTBOX_IT_PG_MAJOR"):
        assert num // 10000 == int(os.environ["OUTBOX_IT_PG_MAJOR"]), version
    r = ctx.migrate_relay.check()
    assert r.returncode == 0, r.stdout + r.stderr
    supported = f"{SUPPORTED[0]} to {SUPPORTED[1]}"
    assert (f"ok    postgres version: {version} (polling mode: supported, {supported}; "
            f"replication mode: supported, {supported}; tested in CI)" in r.stdout), r.stdout


# --- managed PostgreSQL services (relay/cli/managed_pg.h), emulated on the real server: the
# roles they create and their custom settings (dotted names any server takes as placeholders),
# set per role or per database so that they hold from a session's start, for its sessions only.

def _replication_config(ctx, dsn):
    return ctx.config({
        "postgres": {"dsn": dsn},
        "source": {"mode": "replication",
                   "replication": {"slot_name": ctx.slot_name, "publication_name": ctx.publication,
                                   "create_slot": True, "create_publication": True}},
    })


def _line(stdout: str, prefix: str) -> str:
    return next((ln for ln in stdout.splitlines() if ln.startswith(prefix)), f"(no {prefix!r})")


def _fix(stdout: str, prefix: str) -> str:
    """The fix printed under the line starting with `prefix`."""
    lines = stdout.splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.startswith(prefix)), None)
    if at is None or at + 1 == len(lines) or not lines[at + 1].startswith("      fix: "):
        return f"(no fix under {prefix!r})"
    return lines[at + 1][len("      fix: "):]


def test_check_on_rds_counts_membership_of_rds_replication_as_the_privilege(ctx, tmp_path):
    """Regression: on RDS and Aurora a role given replication the only way there (GRANT
    rds_replication) was reported as lacking REPLICATION, with ALTER ROLE as the fix, which
    RDS refuses. The roles rds_superuser and rds_replication and the setting
    rds.logical_replication emulate an RDS instance."""
    role = f"it_rds_{uuid.uuid4().hex[:8]}"
    with ctx.connect() as c:
        made = [r for r in ("rds_superuser", "rds_replication")
                if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchall()]
        for r in made:
            c.execute(f"CREATE ROLE {r} NOLOGIN")
        c.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE outbox_relay')
        c.execute(f'ALTER DATABASE "{ctx.db}" SET rds.logical_replication = on')
    try:
        dsn = ctx.dsn.replace("user=postgres", f"user={role}")
        relay = Relay(_replication_config(ctx, dsn), tmp_path, binary=ctx.relay_bin, name="rds")
        r = relay.check()
        assert r.returncode == 1, r.stdout + r.stderr
        assert ("ok    managed postgres: Amazon RDS or Aurora (setting rds.logical_replication = on, "
                "role rds_superuser, role rds_replication)") in r.stdout, r.stdout
        assert _line(r.stdout, "FAIL  replication privilege") == (
            f"FAIL  replication privilege: role {role} lacks replication: on Amazon RDS and Aurora "
            "it is membership of role rds_replication (the REPLICATION attribute cannot be granted "
            "there)"), r.stdout
        assert ("      fix: as the master user (a member of rds_superuser): GRANT rds_replication TO "
                f"{role}") in r.stdout, r.stdout
        assert "ALTER ROLE" not in r.stdout, r.stdout

        with ctx.connect() as c:  # the fix it gave, verbatim
            c.execute(f"GRANT rds_replication TO {role}")
        r = relay.check()
        assert (f"ok    replication privilege: role {role} may replicate (member of rds_replication)"
                in r.stdout), r.stdout
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        with ctx.connect() as c:
            c.execute(f'ALTER DATABASE "{ctx.db}" RESET rds.logical_replication')
            c.execute(f'DROP OWNED BY "{role}"')
            c.execute(f'DROP ROLE "{role}"')
            for r in made:
                c.execute(f"DROP ROLE {r}")


def test_check_without_logical_wal_on_a_managed_service_gives_the_providers_own_fix(
        ctx, it_root, tmp_path):
    """Regression: on RDS, Aurora, Cloud SQL and Azure check told to ALTER SYSTEM SET
    wal_level, which they refuse. A server of its own with wal_level = replica (as RDS with
    rds.logical_replication off), and each provider's setting in turn on the relay's role."""
    from harness import Postgres

    server = Postgres(it_root / f"pg-replica-{uuid.uuid4().hex[:8]}")
    server.start()
    try:
        with server.connect("postgres", autocommit=True) as c:
            c.execute("ALTER SYSTEM SET wal_level = replica")
        server.restart()
        dsn = server.dsn  # the database outbox, migrated as postgres
        Relay(_replication_config(ctx, dsn), tmp_path, binary=ctx.relay_bin, name="migrate").migrate()
        with server.connect("postgres", autocommit=True) as c:
            c.execute("CREATE ROLE relay LOGIN IN ROLE outbox_relay")
        relay = Relay(_replication_config(ctx, dsn.replace("user=postgres", "user=relay")),
                      tmp_path, binary=ctx.relay_bin, name="managed")
        cases = [
            (None, None, "ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL",
             "as a superuser: ALTER ROLE relay REPLICATION"),
            ("rds.logical_replication", "off",
             "set rds.logical_replication = 1 in the instance's DB parameter group (Aurora: in the "
             "DB cluster parameter group), then reboot the instance",
             "GRANT rds_replication TO relay"),
            ("cloudsql.logical_decoding", "off",
             "set the database flag cloudsql.logical_decoding = on",
             "as user postgres (or another member of cloudsqlsuperuser"),
            ("azure.extensions", "pg_stat_statements",
             "set the server parameter wal_level = logical",
             "as the server's admin user (a member of azure_pg_admin"),
        ]
        for setting, value, wal_fix, grant_fix in cases:
            if setting:
                with server.connect("postgres", autocommit=True) as c:
                    c.execute(f"ALTER ROLE relay SET {setting} = '{value}'")
            r = relay.check()
            assert r.returncode == 1, r.stdout + r.stderr
            assert _line(r.stdout, "FAIL  wal_level") == (
                "FAIL  wal_level: replica; replication mode needs wal_level = logical"), r.stdout
            assert wal_fix in _fix(r.stdout, "FAIL  wal_level"), r.stdout
            assert grant_fix in _fix(r.stdout, "FAIL  replication privilege"), r.stdout
            assert ("ALTER SYSTEM SET" in r.stdout) == (setting is None), r.stdout
            managed = _line(r.stdout, "ok    managed postgres")
            assert (f"setting {setting} = {value}" in managed) if setting else "(no" in managed, r.stdout
            if setting:
                with server.connect("postgres", autocommit=True) as c:
                    c.execute(f"ALTER ROLE relay RESET {setting}")
    finally:
        server.stop()
