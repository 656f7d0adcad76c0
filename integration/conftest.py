"""Fixtures for the outbox-relay integration tests.

One PostgreSQL and one Kafka serve the whole session (started in a temp dir,
stopped in finalizers). Each test gets `ctx`: a fresh database migrated with
`outbox-relay migrate`, unique topic names, and relays/writers/readers that are
stopped when the test ends. Tests marked `chaos` restart the shared servers;
they are started again afterwards if a test left them down.

The `mode` fixture ("polling" unless a test module overrides it, e.g. with
params=["polling", "replication"]) is the source.mode of ctx.config(). In
replication mode each test has its own slot name (slot names are global to the
cluster) and the cleanup drops the test database's slots before the database.

Environment:
  OUTBOX_RELAY_BIN          relay binary (default <repo>/build/outbox-relay)
  OUTBOX_IT_REQUIRE_BINARY  fail instead of skip when the binary is missing
  OUTBOX_IT_KEEP            keep the temp dir (servers' data, relay logs) even on success
  OUTBOX_IT_TMP             parent directory for the temp dir (default: system temp)
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from harness import (
    Kafka,
    Recvlogical,
    Postgres,
    Relay,
    Writers,
    deep_merge,
    fetch_rows,
    drop_database_slots,
    lsn_text,
    relay_binary,
    slot_state,
    start_all,
    wait_until,
)

from harness.faults import FAULTS_KEY, crash_points_compiled, profile as fault_profile, table_lines as fault_table_lines
from harness.relay import missing_build, require_executable
from harness.tls_fixtures import tls_certs, tls_db, tls_kafka, tls_pg  # noqa: F401 (fixtures)

_counter = itertools.count(1)
NOTES_KEY = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[NOTES_KEY] = []
    config.stash[FAULTS_KEY] = []


def pytest_report_header(config):
    b = relay_binary()
    return [f"outbox-relay binary: {b} ({'present' if b.exists() else 'MISSING'})"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    notes = config.stash.get(NOTES_KEY, [])
    if notes:
        terminalreporter.section("outbox-relay integration notes")
        for test, text in notes:
            terminalreporter.write_line(f"{test}: {text}")
    faults = config.stash.get(FAULTS_KEY, [])
    if faults:  # tests/test_faults.py: one row per scenario and mode
        terminalreporter.section(f"fault injection ({fault_profile().name} profile)")
        for line in fault_table_lines(faults):
            terminalreporter.write_line(line)


def _say(config, text: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(text)


# --------------------------------------------------------------------- session
@pytest.fixture(scope="session")
def relay_bin() -> Path:
    b = relay_binary()
    return require_executable(b, f"relay binary {b} is not built (set OUTBOX_RELAY_BIN or build it)")


@pytest.fixture(scope="module")
def crash_build(relay_bin):
    """relay_bin, built with the crash points (test_faults.py, test_exactly_once.py)."""
    if not crash_points_compiled(relay_bin):
        missing_build(f"{relay_bin} was built without -DOUTBOX_CRASH_POINTS=ON (integration/test-all.sh turns it on)")
    return relay_bin


@pytest.fixture(scope="session")
def it_root(request) -> Path:
    d = Path(tempfile.mkdtemp(prefix="outbox-it-", dir=os.environ.get("OUTBOX_IT_TMP")))
    d.chmod(0o755)  # the postgres user must reach DIR/pg
    yield d
    if request.session.testsfailed or os.environ.get("OUTBOX_IT_KEEP"):
        request.config.stash[NOTES_KEY].append(("temp dir kept (server data and logs)", str(d)))
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def servers(it_root, request):
    pg = Postgres(it_root / "pg")
    kafka = Kafka(it_root / "kafka")

    def stop_all():
        errors = []
        for s in (pg, kafka):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]

    request.addfinalizer(stop_all)  # before starting: a half-failed start is cleaned up too
    t0 = time.monotonic()
    start_all([pg, kafka])
    _say(
        request.config,
        f"\nservers up in {time.monotonic() - t0:.1f}s: postgres {pg.dsn}, kafka {kafka.bootstrap}",
    )
    return pg, kafka


@pytest.fixture(scope="session")
def pg(servers) -> Postgres:
    return servers[0]


@pytest.fixture(scope="session")
def kafka(servers) -> Kafka:
    return servers[1]


@pytest.fixture(autouse=True)
def _chaos_guard(request):
    """Chaos tests restart the shared servers: make sure both run afterwards."""
    yield
    if request.node.get_closest_marker("chaos") is not None and "servers" in request.fixturenames:
        pg, kafka = request.getfixturevalue("servers")
        pg.ensure_running()
        kafka.ensure_running()


# ------------------------------------------------------------------- per test
@pytest.fixture
def mode() -> str:
    """source.mode of ctx.config(); test modules override this fixture."""
    return "polling"


PUBLICATION = "outbox_relay"


class ITContext:
    """What one test works with: its own database and topics, and the relays,
    writers and readers it starts (all stopped at the end)."""

    def __init__(self, request, pg: Postgres, kafka: Kafka, relay_bin: Path, workdir: Path, mode: str = "polling"):
        if mode not in ("polling", "replication"):
            raise ValueError(f"unknown source mode {mode!r}")
        self.mode = mode
        self.request = request
        self.pg = pg
        self.kafka = kafka
        self.relay_bin = relay_bin
        self.workdir = workdir
        base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
        self.name = f"{base}_{next(_counter)}"
        self.db = f"it_{self.name}"
        self.slot_name = f"or_{self.name}"[:63]  # cluster-wide namespace
        self.publication = PUBLICATION  # per database
        self.dsn = pg.create_database(self.db)
        self._relays: list[Relay] = []
        self._writers: list[Writers] = []
        self._closables: list = []
        self._processes: list = []  # e.g. Recvlogical: stopped before the slots are dropped
        self._probe = None
        try:
            self.migrate_relay = Relay(self.config(), workdir, binary=relay_bin, name="migrate")
            self.migrate_relay.migrate()
        except BaseException:
            pg.drop_database(self.db)
            raise

    # ------------------------------------------------------------- building
    def config(self, overrides: dict | None = None) -> dict:
        base = {
            "postgres": {"dsn": self.dsn},
            "kafka": {"bootstrap_servers": self.kafka.bootstrap, "properties": {"linger.ms": "5"}},
            "source": {
                "mode": "polling",
                "polling": {"batch_size": 500, "interval_ms": 100},
                # a window of 4 batches: tight bounds for the fault tests' duplicate count
                "pipeline": {"max_in_flight_rows": 2000},
            },
            "log": {"level": "info", "format": "text"},
        }
        if self.mode == "replication":
            base["source"]["mode"] = "replication"
            base["source"]["replication"] = {
                "slot_name": self.slot_name,
                "publication_name": self.publication,
                "create_slot": True,
                "create_publication": True,
                "status_interval_ms": 10000,
                "heartbeat_interval_ms": 10000,
            }
        return deep_merge(base, overrides or {})

    def relay(self, overrides: dict | None = None, name: str = "relay") -> Relay:
        r = Relay(self.config(overrides), self.workdir, binary=self.relay_bin, name=name)
        self._relays.append(r)
        return r

    def topic(self, suffix: str = "events", partitions: int = 6, config: dict | None = None,
              create: bool = True) -> str:
        name = re.sub(r"[^a-zA-Z0-9._-]", "-", f"it.{self.name}.{suffix}")[:200]
        return self.kafka.create_topic(name, partitions, config=config) if create else name

    # A blocked statement must fail the test with a message, not hang it. The server runs
    # with synchronous_commit = off (env/pg.sh); writers commit synchronously as services
    # do by default: then a walsender may send a transaction before its commit is visible
    # to other sessions, a window the relay must handle (asynchronous commits hide it).
    CONN_OPTIONS = "-c lock_timeout=20s -c statement_timeout=120s -c synchronous_commit=on"

    def connect(self, autocommit: bool = True):
        c = self.pg.connect(self.db, autocommit=autocommit, options=self.CONN_OPTIONS)
        self._closables.append(c)
        return c

    def writers(self, topic: str, keys, total: int, **kw) -> Writers:
        w = Writers(
            lambda: self.pg.connect(self.db, autocommit=True, options=self.CONN_OPTIONS), topic, keys, total, **kw
        )
        self._writers.append(w)
        return w

    def reader(self, topics):
        r = self.kafka.reader(topics)
        self._closables.append(r)
        return r

    def recvlogical(self, slot: str | None = None, publication: str | None = None,
                    application_name: str | None = None) -> Recvlogical:
        """A pg_recvlogical --start on the slot (not started yet); stopped at the end."""
        dsn = self.dsn + (f" application_name={application_name}" if application_name else "")
        r = Recvlogical(
            dsn, slot or self.slot_name, publication or self.publication, self.workdir / "recvlogical.log"
        )
        self._processes.append(r)
        return r

    def note(self, text: str) -> None:
        """A line for the end-of-run summary (duplicates seen, timings...)."""
        self.request.config.stash[NOTES_KEY].append((self.request.node.name, text))
        print(text)

    # -------------------------------------------------------------- queries
    def _query(self, sql: str, params=()):
        """On a probe connection that reconnects if the server restarted."""
        import psycopg

        for attempt in (1, 2):
            try:
                if self._probe is None or self._probe.closed:
                    self._probe = self.pg.connect(self.db, autocommit=True)
                return self._probe.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if self._probe is not None:
                    try:
                        self._probe.close()
                    except Exception:  # noqa: BLE001
                        pass
                self._probe = None
                if attempt == 2:
                    raise

    def counts(self) -> tuple[int, int]:
        """(rows, rows marked published)."""
        total, marked = self._query("SELECT count(*), count(published_at) FROM outbox.events")[0]
        return total, marked

    def marked(self) -> int:
        return self.counts()[1]

    # ------------------------------------------------------------ the slot
    def slot(self, name: str | None = None):
        """SlotState of the test's slot (or `name`), None if it does not exist."""
        self._query("SELECT 1")  # (re)connects the probe if needed
        return slot_state(self._probe, name or self.slot_name)

    def wal_lsn(self) -> int:
        from harness import lsn_int

        return lsn_int(self._query("SELECT pg_current_wal_lsn()::text")[0][0])

    def wait_slot_confirmed(self, lsn: int, timeout_s: float, relay: Relay | None = None, name: str | None = None):
        """Until the slot's confirmed_flush_lsn >= lsn; returns the SlotState."""

        def probe():
            s = self.slot(name)
            probe.last = s
            return s if s is not None and (s.confirmed_flush_lsn or 0) >= lsn else None

        probe.last = None
        check = (lambda: relay.assert_running("while waiting for the slot to advance")) if relay else None
        try:
            return wait_until(probe, timeout_s, 0.1, f"confirmed_flush_lsn >= {lsn_text(lsn)}", check)
        except AssertionError as e:
            raise AssertionError(
                f"{e}; {probe.last.describe() if probe.last else 'no slot'}"
                + (f"\nrelay log tail:\n{relay.log_tail()}" if relay else "")
            ) from None

    def wait_streaming(self, relay: Relay | None = None, timeout_s: float = 30.0, name: str | None = None):
        """Until a walsender streams from the slot (pg_stat_replication state catchup or
        streaming, i.e. after START_REPLICATION); returns the SlotState. Creating a slot
        waits for every transaction open at that time, so a test that opens one on
        purpose must first wait for this."""

        def probe():
            s = self.slot(name)
            probe.last = s
            if s is None or not s.active or s.active_pid is None:
                return None
            st = self._query("SELECT state FROM pg_stat_replication WHERE pid = %s", (s.active_pid,))
            return s if st and st[0][0] in ("catchup", "streaming") else None

        probe.last = None
        check = (lambda: relay.assert_running("while waiting for it to stream")) if relay else None
        try:
            desc = f"a walsender streaming from slot {name or self.slot_name}"
            return wait_until(probe, timeout_s, 0.05, desc, check)
        except AssertionError as e:
            raise AssertionError(
                f"{e}; {probe.last.describe() if probe.last else 'no slot'}"
                + (f"\nrelay log tail:\n{relay.log_tail()}" if relay else "")
            ) from None

    def check_slot_caught_up(self, lsn: int | None, relay: Relay | None = None, timeout_s: float = 30.0) -> None:
        """Replication mode: once every row is marked, the slot must be confirmed at
        least to `lsn` (a position inside the last outbox transaction, e.g.
        Writers.max_pre_commit_lsn). No-op in polling mode."""
        if self.mode != "replication" or lsn is None:
            return
        self.wait_slot_confirmed(lsn, timeout_s, relay)

    def rows(self, topic: str | None = None):
        with self.pg.connect(self.db, autocommit=True) as c:
            return fetch_rows(c, topic)

    def wait_all_published(self, expected_rows: int, timeout_s: float, relay: Relay | None = None) -> None:
        """Until the table holds expected_rows rows and all are marked published."""

        def probe():
            total, marked = self.counts()
            probe.last = (total, marked)
            return total >= expected_rows and marked == total

        probe.last = None
        check = (lambda: relay.assert_running("while waiting for rows to be marked")) if relay else None
        try:
            wait_until(probe, timeout_s, 0.1, desc=f"{expected_rows} rows marked published", check=check)
        except AssertionError as e:
            raise AssertionError(
                f"{e}; (rows, marked) = {probe.last}" + (f"\nrelay log tail:\n{relay.log_tail()}" if relay else "")
            ) from None

    def wait_marked_at_least(self, n: int, timeout_s: float, relay: Relay | None = None) -> int:
        check = (lambda: relay.assert_running("while waiting for rows to be marked")) if relay else None
        return wait_until(lambda: (m := self.marked()) >= n and m, timeout_s, 0.02, f">= {n} rows marked", check)

    # -------------------------------------------------------------- cleanup
    def close(self) -> None:
        for w in self._writers:
            w.stop()
        for w in self._writers:
            try:
                w.join(30)
            except Exception:  # noqa: BLE001
                pass
        for r in self._relays:
            r.stop_quietly()
        for p in self._processes:
            try:
                p.close()
            except Exception:  # noqa: BLE001
                pass
        for c in self._closables + [self._probe]:
            try:
                if c is not None:
                    c.close()
            except Exception:  # noqa: BLE001
                pass
        # a chaos test may have left a server down
        self.pg.ensure_running()
        self.kafka.ensure_running()
        drop_database_slots(self.pg, self.db)  # a database with a slot cannot be dropped
        self.pg.drop_database(self.db)


@pytest.fixture
def ctx(request, pg, kafka, relay_bin, tmp_path, mode) -> ITContext:
    c = ITContext(request, pg, kafka, relay_bin, tmp_path, mode)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def ctx_factory(request, pg, kafka, relay_bin, tmp_path):
    """make(mode) -> a further ITContext (own database, topics, workdir tmp_path/mode), e.g.
    to run both source modes through one server fault; all closed when the test ends."""
    made: list[ITContext] = []

    def make(mode: str) -> ITContext:
        c = ITContext(request, pg, kafka, relay_bin, tmp_path / mode, mode)
        made.append(c)
        return c

    try:
        yield make
    finally:
        errors = []
        for c in made:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]
