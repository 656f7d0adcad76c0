"""Operability defects found by trying the relay as a platform team would."""

from __future__ import annotations


def test_allow_weak_tls_also_covers_the_admin_dsn_of_migrate(ctx):
    """Regression: postgres.allow_weak_tls: true let `run` use a non-verify-full dsn to a remote host, but
    `migrate` refused the same kind of postgres.admin_dsn (exit 2) with "set
    postgres.allow_weak_tls: true to accept this": the chart's migration Job (pre-install and
    pre-upgrade hook) failed whatever the operator set. 0.0.0.0 reaches the test server over
    loopback but is not one of the addresses the TLS policy counts as loopback."""
    port = ctx.pg.port
    cfg = {"postgres": {"dsn": f"host=0.0.0.0 port={port} dbname={ctx.db} user=postgres sslmode=disable",
                        "admin_dsn": f"host=0.0.0.0 port={port} dbname={ctx.db} user=postgres sslmode=disable",
                        "allow_weak_tls": True}}
    relay = ctx.relay(cfg, name="weak-tls")
    r = relay.command("migrate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "schema up to date" in r.stdout
    # Without the key, both dsns are refused, each named.
    cfg["postgres"]["allow_weak_tls"] = False
    strict = ctx.relay(cfg, name="strict-tls")
    r = strict.command("migrate")
    assert r.returncode == 2 and "postgres.admin_dsn: sslmode=disable" in r.stderr, r.stdout + r.stderr


def test_check_fails_on_a_read_only_session_instead_of_passing(ctx):
    """Regression: a dsn whose sessions are read-only (default_transaction_read_only = on for the role or
    database, or a hot standby by mistake): `run` publishes the first rows and can never mark
    them (each restart sends them again), yet `check` said "all checks passed"."""
    ro = ctx.relay({"postgres": {"dsn": ctx.dsn + " options='-c default_transaction_read_only=on'"}},
                   name="read-only")
    r = ro.check()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  postgres writable" in r.stdout and "default_transaction_read_only" in r.stdout, r.stdout
    ok = ctx.relay(name="read-write").check()
    assert ok.returncode == 0 and "ok    postgres writable" in ok.stdout, ok.stdout + ok.stderr
