"""`outbox-relay migrate` on a live database (found by trying an upgrade as a platform team
would): a migration that needs a strong lock on outbox.events (0004's ADD COLUMN) queued
behind one open service transaction, and every service's enqueue queued behind it: services
hung until that transaction ended. migrate now waits for such a lock at most
a second at a time and retries, so services are delayed by a second at most."""

from __future__ import annotations

import subprocess
import time

import psycopg

from harness import wait_until

EARLY = ["0001_outbox_events", "0002_roles", "0003_hint_without_row_locks"]


def _checksum(data: bytes) -> str:  # pg/migrations.cc checksum(): FNV-1a 64
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def test_migrate_never_queues_service_writes_behind_an_open_transaction(ctx):
    from harness.servers import REPO_DIR

    name = ctx.db + "_old"
    with ctx.pg.connect("postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    dsn = ctx.pg.dsn_for(name)
    migrate = None
    try:
        # A database migrated by an older release: 0001-0003 only.
        with psycopg.connect(dsn, autocommit=True) as c:
            for n in EARLY:
                sql = (REPO_DIR / "schema" / f"{n}.sql").read_bytes()
                with c.transaction():
                    c.execute(sql.decode())
                    c.execute("INSERT INTO outbox.schema_migrations (version, name, checksum) "
                              "VALUES (%s, %s, %s)", (int(n[:4]), n, _checksum(sql)))
        relay = ctx.relay({"postgres": {"dsn": dsn}}, name="upgrade")
        # A service transaction that stays open (slow business logic) during the upgrade.
        slow = psycopg.connect(dsn)
        slow.execute("SELECT outbox.enqueue('t', 'slow', '{}'::jsonb)")
        migrate = subprocess.Popen([str(relay.binary), "migrate", "--config", str(relay.config_path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with psycopg.connect(dsn, autocommit=True) as probe:
            wait_until(lambda: probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND query LIKE '%%0004%%'", (name,)).fetchone()[0] > 0, 30, 0.05, "migrate running 0004")
            # Other services keep writing meanwhile, each within a small delay.
            with psycopg.connect(dsn, autocommit=True, options="-c statement_timeout=10s") as svc:
                for i in range(5):
                    t0 = time.monotonic()
                    svc.execute("SELECT outbox.enqueue('t', %s, '{}'::jsonb)", (f"k{i}",))
                    took = time.monotonic() - t0
                    assert took < 3.0, f"enqueue {i} waited {took:.1f} s behind migrate"
            assert migrate.poll() is None, "migrate should still be waiting for its lock"
            slow.commit()
            slow.close()
            out, _ = migrate.communicate(timeout=60)
            assert migrate.returncode == 0, out
            assert "applied  0004_replay" in out and "waiting" in out, out
            n_rows = probe.execute("SELECT count(*) FROM outbox.events").fetchone()[0]
            assert n_rows == 6
    finally:
        if migrate is not None and migrate.poll() is None:
            migrate.kill()
            migrate.wait()
        ctx.pg.drop_database(name)
