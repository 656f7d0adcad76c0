"""pytest fixtures for the TLS/SASL/secret tests (loaded by conftest.py).

tls_certs, tls_pg and tls_kafka are session-scoped and started only when a test asks for
them (test_tls_pg.py, test_tls_kafka.py, test_secrets.py): PostgreSQL ~2 s, Kafka ~10 s.
tls_db is a fresh database on tls_pg, migrated by `outbox-relay migrate` over verify-full.
"""

from __future__ import annotations

import itertools
import re

import pytest

from .relay import Relay
from .replication import drop_database_slots
from .tls import Certs, TlsKafka, TlsPostgres

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def tls_certs(it_root) -> Certs:
    return Certs(it_root / "tls-certs")


@pytest.fixture(scope="session")
def tls_pg(it_root, tls_certs, request) -> TlsPostgres:
    pg = TlsPostgres(it_root / "tls-pg", tls_certs)
    request.addfinalizer(pg.stop)
    return pg.start()


@pytest.fixture(scope="session")
def tls_kafka(it_root, tls_certs, request) -> TlsKafka:
    k = TlsKafka(it_root / "tls-kafka", tls_certs)
    request.addfinalizer(k.stop)
    return k.start()


class TlsDb:
    """A database on tls_pg, migrated, dropped at the end."""

    def __init__(self, pg: TlsPostgres, relay_bin, workdir, name: str):
        self.pg = pg
        self.name = name
        self.relay_bin = relay_bin
        self.workdir = workdir
        pg.create_database(name)
        Relay(self.config(self.pg.tls_dsn(name, "postgres"), "127.0.0.1:1"), workdir, relay_bin, "migrate").migrate()

    def config(self, dsn: str, bootstrap: str, **extra) -> dict:
        cfg = {
            "postgres": {"dsn": dsn},
            "kafka": {"bootstrap_servers": bootstrap},
            "source": {"mode": "polling", "polling": {"batch_size": 100, "interval_ms": 100}},
            "relay": {"backoff_initial_ms": 100, "backoff_max_ms": 1000, "shutdown_timeout_ms": 5000},
        }
        cfg.update(extra)
        return cfg

    def connect(self, autocommit: bool = True):
        return self.pg.connect(self.name, autocommit=autocommit)

    def counts(self) -> tuple[int, int]:
        with self.connect() as c:
            return c.execute("SELECT count(*), count(published_at) FROM outbox.events").fetchone()

    def close(self) -> None:
        drop_database_slots(self.pg, self.name)
        self.pg.drop_database(self.name)


@pytest.fixture
def tls_db(request, tls_pg, relay_bin, tmp_path) -> TlsDb:
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    db = TlsDb(tls_pg, relay_bin, tmp_path, f"tls_{base}_{next(_counter)}")
    try:
        yield db
    finally:
        db.close()
