"""The consumer-side inbox (schema/inbox/0001_inbox.sql) and the example consumer
(integration/inbox_consumer/): at-least-once delivery + deduplication in the consumer's own
transaction = each event applied once, whatever Kafka re-delivers.

The consumer's database is a database of its own (not the outbox database), with the inbox
installed the documented way (psql -f); the example runs as a login role that has
inbox_consumer plus its business tables' grants, nothing more. The business tables are a
counter per key and an append-only row per application, so a second application shows."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import IsolationLevel, errors

from harness import enqueue, relay_binary, wait_until
from harness.relay import require_executable

REPO = Path(__file__).resolve().parents[2]
INBOX_SQL = REPO / "schema" / "inbox" / "0001_inbox.sql"
EXAMPLE_SQL = REPO / "integration" / "inbox_consumer" / "example.sql"
LEVELS = {
    "read-committed": IsolationLevel.READ_COMMITTED,
    "repeatable-read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}


def consumer_binary() -> Path:
    env = os.environ.get("OUTBOX_INBOX_CONSUMER_BIN")
    return Path(env) if env else relay_binary().parent / "integration" / "inbox_consumer" / "inbox-consumer"


@pytest.fixture(scope="session")
def consumer_bin() -> Path:
    b = consumer_binary()
    return require_executable(
        b, f"example consumer {b} is not built (set OUTBOX_INBOX_CONSUMER_BIN or build the inbox-consumer target)"
    )


def psql_file(dsn: str, path: Path) -> subprocess.CompletedProcess:
    """The documented installation: psql -v ON_ERROR_STOP=1 -1 -f FILE."""
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path), dsn],
                          capture_output=True, text=True, timeout=60)


class ConsumerDb:
    """A database for the consuming service: the inbox, the example's tables, and a login role
    that is a member of inbox_consumer and has its business grants only."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.db = f"{ctx.db}_in"[:63]
        self.role = f"inbox_svc_{ctx.name}"[:63]
        self.admin_dsn = ctx.pg.create_database(self.db)
        self.dsn = f"{self.admin_dsn.replace('user=postgres', '')} user={self.role}"
        for path in (INBOX_SQL, EXAMPLE_SQL):
            r = psql_file(self.admin_dsn, path)
            assert r.returncode == 0, f"{path}: {r.stdout}{r.stderr}"
        with self.admin() as c:
            c.execute(f'CREATE ROLE "{self.role}" LOGIN IN ROLE inbox_consumer')
            c.execute(f'GRANT USAGE ON SCHEMA example TO "{self.role}"')
            c.execute(f'GRANT SELECT, INSERT, UPDATE ON example.key_totals TO "{self.role}"')
            c.execute(f'GRANT INSERT ON example.applied_events TO "{self.role}"')

    def admin(self, autocommit: bool = True):
        return psycopg.connect(self.admin_dsn, autocommit=autocommit, connect_timeout=10)

    def service(self, autocommit: bool = True):
        return psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10)

    def query(self, sql: str, params=()):
        with self.admin() as c:
            return c.execute(sql, params).fetchall()

    def applied(self) -> int:
        return self.query("SELECT count(*) FROM example.applied_events")[0][0]

    def close(self) -> None:
        self.ctx.pg.drop_database(self.db)
        with self.ctx.pg.connect("postgres", autocommit=True) as c:
            c.execute(f'DROP ROLE IF EXISTS "{self.role}"')


@pytest.fixture
def cdb(ctx):
    d = ConsumerDb(ctx)
    try:
        yield d
    finally:
        d.close()


class ConsumerProcess:
    """One run of the example consumer; its stderr goes to WORKDIR/NAME.log."""

    def __init__(self, binary: Path, workdir: Path, name: str, args: list[str]):
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([str(binary), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        if not self.running:
            raise AssertionError(f"consumer exited ({self.proc.returncode}):\n{self.log()[-3000:]}")

    def kill(self) -> int:
        if self.running:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(30)

    def terminate(self, timeout_s: float = 30) -> int:
        if self.running:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop_quietly(self) -> None:
        try:
            self.terminate(20)
        except Exception:  # noqa: BLE001
            self.kill()

    def summary(self) -> dict[str, int]:
        """The counts of its last 'stopped: ...' line."""
        line = [ln for ln in self.log().splitlines() if "stopped:" in ln][-1]
        parts = [p.strip() for p in line.split("stopped:", 1)[1].split(",")]
        return {" ".join(p.split()[1:]): int(p.split()[0]) for p in parts}

    def duplicate_ids(self) -> list[str]:
        return [ln.split()[2] for ln in self.log().splitlines() if ln.startswith("inbox-consumer: duplicate ")]


@pytest.fixture
def consumers(ctx, cdb, consumer_bin):
    """start(group, *extra_args, name=...) -> ConsumerProcess; all stopped at the end."""
    started: list[ConsumerProcess] = []

    def start(group: str, *extra: str, topic: str, name: str = "consumer", consumer: str = "orders-projection"):
        args = ["--brokers", ctx.kafka.bootstrap, "--topic", topic, "--group", group, "--dsn", cdb.dsn,
                "--consumer", consumer, *extra]
        p = ConsumerProcess(consumer_bin, ctx.workdir, f"{name}-{len(started)}", args)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop_quietly()


def publish(ctx, topic: str, n: int, keys: int = 12) -> dict[str, tuple[str, int]]:
    """n events through the relay (already running); returns event_id -> (key, payload bytes)."""
    with ctx.connect(autocommit=False) as c:
        for i in range(n):
            enqueue(c, topic, f"k{i % keys}", f"event {i} ".encode() * (1 + i % 5))
            if i % 200 == 199:
                c.commit()
        c.commit()
    rows = ctx._query("SELECT event_id::text, key, length(payload) FROM outbox.events WHERE topic = %s", (topic,))
    assert len(rows) == n
    return {e: (k, size) for e, k, size in rows}


def group_caught_up(ctx, group: str, topic: str) -> bool:
    """The group's committed offset is at the end of every partition of the topic."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": ctx.kafka.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "log_level": 3})
    try:
        parts = ctx.kafka.admin().list_topics(topic, timeout=10).topics[topic].partitions
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        ends = [c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1] for tp in committed]
        return all(tp.offset == end or end == 0 for tp, end in zip(committed, ends))  # nothing to commit on 0
    finally:
        c.close()


def rewind_group(ctx, group: str, topic: str) -> None:
    """Commit offset 0 on every partition for an (empty) group: the next run reads it all again."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": ctx.kafka.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "log_level": 3})
    try:
        parts = ctx.kafka.admin().list_topics(topic, timeout=10).topics[topic].partitions
        c.commit(offsets=[TopicPartition(topic, p, 0) for p in parts], asynchronous=False)
    finally:
        c.close()


def assert_applied_once(cdb, expected: dict[str, tuple[str, int]], consumer: str = "orders-projection") -> None:
    """Every event applied exactly once: one row each, counters and byte sums per key exact."""
    rows = cdb.query("SELECT event_id::text FROM example.applied_events")
    counts = Counter(r[0] for r in rows)
    twice = {e: n for e, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} events applied more than once, e.g. {list(twice.items())[:5]}"
    assert set(counts) == set(expected), (
        f"missing {len(set(expected) - set(counts))}, foreign {len(set(counts) - set(expected))}")
    want_events, want_bytes = Counter(), Counter()
    for key, size in expected.values():
        want_events[key] += 1
        want_bytes[key] += size
    got = {k: (n, b) for k, n, b in cdb.query("SELECT key, events, payload_bytes FROM example.key_totals")}
    assert got == {k: (want_events[k], want_bytes[k]) for k in want_events}
    recorded = cdb.query("SELECT count(*) FROM inbox.processed WHERE consumer = %s", (consumer,))[0][0]
    assert recorded == len(expected)


# ------------------------------------------------------------------ the example, end to end
def test_replaying_the_topic_twice_applies_each_event_once(ctx, cdb, consumers):
    """(a) The consumer runs while the relay publishes; then the topic is read again twice: by
    a new group from the beginning, and by the first group with its offsets reset to 0. A
    consumer without the inbox would apply everything three times."""
    n = 1500
    topic = ctx.topic("orders", partitions=3)
    relay = ctx.relay().start()
    first = consumers("projection", "--commit-every", "50", topic=topic, name="first")
    expected = publish(ctx, topic, n)
    # A message that did not come from the relay: no outbox-event-id, never applied.
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": ctx.kafka.bootstrap})
    p.produce(topic, key=b"k0", value=b"not from the relay")
    assert p.flush(30) == 0

    ctx.wait_all_published(n, 60, relay)
    wait_until(lambda: cdb.applied() >= n and group_caught_up(ctx, "projection", topic), 60, 0.2,
               f"{n} events applied and the offsets committed", first.assert_running)
    assert first.terminate() == 0, first.log()[-2000:]
    in_kafka = len(ctx.kafka.consume_all(topic, n + 1, 60)) - 1  # the relay's messages (+ its duplicates)
    assert first.summary() == {"applied": n, "duplicates skipped": in_kafka - n, "rejected": 1, "retries": 0}
    assert_applied_once(cdb, expected)

    # Replay 1: a new group, from the beginning.
    replay = consumers("projection-replay", "--stop-at-end", topic=topic, name="replay-new-group")
    assert replay.proc.wait(60) == 0, replay.log()[-2000:]
    assert replay.summary()["applied"] == 0
    assert replay.summary()["duplicates skipped"] == in_kafka
    assert set(replay.duplicate_ids()) == set(expected)
    # Replay 2: the first group, its offsets reset to the beginning.
    rewind_group(ctx, "projection", topic)
    again = consumers("projection", "--stop-at-end", topic=topic, name="replay-reset-offsets")
    assert again.proc.wait(60) == 0, again.log()[-2000:]
    assert again.summary() == {"applied": 0, "duplicates skipped": in_kafka, "rejected": 1, "retries": 0}
    assert group_caught_up(ctx, "projection", topic)
    assert_applied_once(cdb, expected)


def test_consumer_killed_mid_stream_applies_each_event_once(ctx, cdb, consumers):
    """(b) SIGKILL the consumer three times while it works through the topic, restarting it
    each time: the events applied but whose offsets were not committed yet come again, and are
    skipped. Offsets are committed every 100 events, so each kill leaves some behind."""
    n = 3000
    topic = ctx.topic("orders", partitions=3)
    relay = ctx.relay().start()
    expected = publish(ctx, topic, n)
    ctx.wait_all_published(n, 90, relay)
    # Static membership: a restarted instance takes its predecessor's place at once instead of
    # waiting for the killed member's session to expire.
    args = ("--commit-every", "100", "--commit-interval-ms", "60000", "--kafka", "group.instance.id=projection-0")
    runs = []
    for kill in (1, 2, 3):
        run = consumers("projection", *args, topic=topic, name=f"killed-{kill}")
        runs.append(run)
        at = wait_until(lambda: (a := cdb.applied()) >= kill * n // 4 and a, 60, 0.01,
                        f">= {kill * n // 4} events applied", run.assert_running)
        assert run.kill() == -signal.SIGKILL
        after = cdb.applied()
        assert at <= after < n, f"kill {kill} was not mid-stream: {after} of {n} applied"
    last = consumers("projection", *args, "--stop-at-end", topic=topic, name="final")
    runs.append(last)
    assert last.proc.wait(90) == 0, last.log()[-2000:]
    assert group_caught_up(ctx, "projection", topic)
    assert_applied_once(cdb, expected)
    skipped = [e for r in runs for e in r.duplicate_ids()]
    # Redeliveries did happen (else the test proved nothing) and were all recognised.
    assert skipped, "no redelivery after three kills: offsets were committed with every event?"
    assert set(skipped) <= set(expected)
    ctx.note(f"3 kills: {len(skipped)} redelivered events skipped by the inbox")


def test_two_consumers_racing_at_serializable_apply_each_event_once(ctx, cdb, consumers):
    """Two instances with the same inbox name (different groups: each reads every event) at
    SERIALIZABLE, as after a rebalance both may hold the same event: between them every event
    is applied once; the loser of each race gets a serialization failure and retries."""
    n = 1000
    topic = ctx.topic("orders", partitions=2)
    relay = ctx.relay().start()
    expected = publish(ctx, topic, n, keys=4)
    ctx.wait_all_published(n, 60, relay)
    a = consumers("racer-a", "--isolation", "serializable", "--stop-at-end", topic=topic, name="racer-a")
    b = consumers("racer-b", "--isolation", "serializable", "--stop-at-end", topic=topic, name="racer-b")
    assert a.proc.wait(90) == 0, a.log()[-2000:]
    assert b.proc.wait(90) == 0, b.log()[-2000:]
    sa, sb = a.summary(), b.summary()
    in_kafka = len(ctx.kafka.consume_all(topic, n, 60))
    assert sa["applied"] + sb["applied"] == n, (sa, sb)
    assert sa["duplicates skipped"] + sb["duplicates skipped"] == 2 * in_kafka - n, (sa, sb)
    assert_applied_once(cdb, expected)
    ctx.note(f"racing at SERIALIZABLE: applied {sa['applied']} + {sb['applied']}, "
             f"retries {sa['retries']} + {sb['retries']}")


# ------------------------------------------------------------------ inbox.record, SQL level
def _wait_blocked(cdb, pid: int) -> None:
    wait_until(lambda: cdb.query("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)) == [(True,)], 20, 0.02, f"session {pid} waiting on a lock")


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
def test_concurrent_record_of_one_id(cdb, level, first_ends):
    """(c) Two sessions record the same id, each applying the effect only if new. The second
    waits for the first. First commits: the second gets false (READ COMMITTED) or a
    serialization failure whose retry gets false (REPEATABLE READ, SERIALIZABLE). First rolls
    back: the second gets true. Exactly one application commits."""
    with cdb.admin() as c:
        c.execute("CREATE TABLE example.effects (n integer NOT NULL)")
        c.execute("INSERT INTO example.effects VALUES (0)")
        c.execute(f'GRANT SELECT, UPDATE ON example.effects TO "{cdb.role}"')
    event = uuid.uuid4()

    def attempt(conn) -> bool:
        fresh = conn.execute("SELECT inbox.record('c', %s)", (event,)).fetchone()[0]
        if fresh:
            conn.execute("UPDATE example.effects SET n = n + 1")
        return fresh

    with cdb.service(autocommit=False) as a, cdb.service(autocommit=False) as b:
        a.isolation_level = b.isolation_level = LEVELS[level]
        b.execute("SELECT 1")  # b's transaction (and at REPEATABLE READ+ its snapshot) starts first
        b_pid = b.info.backend_pid
        assert attempt(a) is True
        outcome: dict = {}

        def second():
            try:
                outcome["first try"] = attempt(b)
                b.commit()
            except errors.SerializationFailure as e:
                outcome["first try"] = e
                b.rollback()
                outcome["retry"] = attempt(b)
                b.commit()

        t = threading.Thread(target=second)
        t.start()
        _wait_blocked(cdb, b_pid)  # record() waits for a's transaction, never decides without it
        getattr(a, first_ends)()
        t.join(30)
        assert not t.is_alive()

    if first_ends == "rollback":
        assert outcome == {"first try": True}
    elif level == "read-committed":
        assert outcome == {"first try": False}
    else:
        assert isinstance(outcome["first try"], errors.SerializationFailure), outcome
        assert outcome["retry"] is False
    assert cdb.query("SELECT n FROM example.effects") == [(1,)]
    assert cdb.query("SELECT count(*) FROM inbox.processed WHERE consumer = 'c' AND event_id = %s", (event,)) == [(1,)]


@pytest.mark.parametrize("level", list(LEVELS))
def test_record_at_each_isolation_level(cdb, level):
    """Sequential cases: new then recorded in one transaction; an id recorded by a transaction
    that committed after this one's snapshot (REPEATABLE READ and SERIALIZABLE: serialization
    failure, retry gives false; READ COMMITTED: false); many distinct ids from two interleaved
    transactions never fail, even at SERIALIZABLE; consumers are separate namespaces."""
    with cdb.service(autocommit=False) as a, cdb.service(autocommit=True) as other:
        a.isolation_level = LEVELS[level]
        x = uuid.uuid4()
        assert a.execute("SELECT inbox.record('c', %s), inbox.record('c', %s)", (x, x)).fetchone() == (True, False)
        assert a.execute("SELECT inbox.record('other-app', %s)", (x,)).fetchone()[0] is True
        a.commit()

        y = uuid.uuid4()
        a.execute("SELECT 1")  # snapshot taken (REPEATABLE READ+)
        assert other.execute("SELECT inbox.record('c', %s)", (y,)).fetchone()[0] is True
        if level == "read-committed":
            assert a.execute("SELECT inbox.record('c', %s)", (y,)).fetchone()[0] is False
            a.commit()
        else:
            with pytest.raises(errors.SerializationFailure):
                a.execute("SELECT inbox.record('c', %s)", (y,))
            a.rollback()
            assert a.execute("SELECT inbox.record('c', %s)", (y,)).fetchone()[0] is False
            a.commit()

        with cdb.service(autocommit=False) as b:
            b.isolation_level = LEVELS[level]
            for _ in range(50):
                assert a.execute("SELECT inbox.record('c', %s)", (uuid.uuid4(),)).fetchone()[0] is True
                assert b.execute("SELECT inbox.record('c', %s)", (uuid.uuid4(),)).fetchone()[0] is True
                a.commit()
                b.commit()

        for bad, message in ((("", uuid.uuid4()), "processed_consumer_check"), (("c", None), "not-null")):
            with pytest.raises(psycopg.errors.IntegrityError, match=message):
                a.execute("SELECT inbox.record(%s, %s::uuid)", bad)
            a.rollback()


# ------------------------------------------------------------------ retention
def test_purge_deletes_only_old_ids_in_batches(cdb):
    """(d) As the service role: inbox.purge deletes at most `batch` ids older than the window,
    oldest first, skipping rows another session holds; inbox.purge_all loops, committing
    after each batch. Recent ids stay whatever the batch size."""
    with cdb.admin() as c:
        for consumer in ("a", "b"):
            c.execute("INSERT INTO inbox.processed (consumer, event_id, processed_at) "
                      "SELECT %s, gen_random_uuid(), now() - interval '40 days' - g * interval '1 second' "
                      "FROM generate_series(1, 1250) g", (consumer,))
        c.execute("INSERT INTO inbox.processed (consumer, event_id, processed_at) "
                  "SELECT 'a', gen_random_uuid(), now() - interval '29 days' FROM generate_series(1, 10)")
    recent = set(cdb.query("SELECT event_id FROM inbox.processed WHERE processed_at > now() - interval '30 days'"))
    oldest = cdb.query("SELECT event_id FROM inbox.processed ORDER BY processed_at LIMIT 1000")

    with cdb.service() as s:
        assert s.execute("SELECT inbox.purge('30 days', 1000)").fetchone()[0] == 1000
        left = {r[0] for r in cdb.query("SELECT event_id FROM inbox.processed")}
        assert not left & {r[0] for r in oldest}, "not the oldest first"
        # A row another session holds locked is skipped, not waited for.
        with cdb.admin(autocommit=False) as holder:
            held = holder.execute("SELECT event_id FROM inbox.processed WHERE processed_at < now() - interval '30 days' "
                                  "ORDER BY processed_at LIMIT 1 FOR UPDATE").fetchone()[0]
            assert [s.execute("SELECT inbox.purge('30 days', 1000)").fetchone()[0] for _ in range(3)] == [1000, 499, 0]
            holder.rollback()
        assert s.execute("SELECT inbox.purge('30 days', 1000)").fetchone()[0] == 1
        assert cdb.query("SELECT count(*) FROM inbox.processed WHERE event_id = %s", (held,)) == [(0,)]
        assert set(cdb.query("SELECT event_id FROM inbox.processed")) == recent

        cdb.query("INSERT INTO inbox.processed (consumer, event_id, processed_at) "
                  "SELECT 'a', gen_random_uuid(), now() - interval '31 days' FROM generate_series(1, 2500) RETURNING 1")
        assert s.execute("CALL inbox.purge_all('30 days', 700)").fetchone()[0] == 2500
        assert set(cdb.query("SELECT event_id FROM inbox.processed")) == recent
        # It commits between batches, so it cannot run inside a transaction block.
        with pytest.raises(psycopg.errors.InvalidTransactionTermination):
            with s.transaction():
                s.execute("CALL inbox.purge_all('30 days', 700)")
        for args, message in ((("-1 day", 10), "older_than must be"), (("1 day", 0), "batch must be between")):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
                s.execute("SELECT inbox.purge(%s::interval, %s)", args)


# ------------------------------------------------------------------ installation and grants
def test_install_is_separate_idempotent_and_least_privilege(ctx, cdb):
    """`outbox-relay migrate` leaves the inbox out; psql -f applies it again without change; the
    role may record and purge, nothing else, and other roles not even that."""
    assert ctx._query("SELECT to_regnamespace('inbox') IS NULL")[0][0], "migrate installed the inbox"
    before = cdb.query("SELECT p.oid, p.proname FROM pg_proc p WHERE p.pronamespace = 'inbox'::regnamespace "
                       "ORDER BY 1")
    again = psql_file(cdb.admin_dsn, INBOX_SQL)
    assert again.returncode == 0, again.stderr
    assert cdb.query("SELECT p.oid, p.proname FROM pg_proc p WHERE p.pronamespace = 'inbox'::regnamespace "
                     "ORDER BY 1") == before
    assert {r[0] for r in before} and {r[1] for r in before} == {"record", "purge", "purge_all"}

    with cdb.service() as s:
        assert s.execute("SELECT inbox.record('c', gen_random_uuid())").fetchone()[0] is True
        for sql in ("SELECT count(*) FROM inbox.processed",
                    "INSERT INTO inbox.processed (consumer, event_id) VALUES ('c', gen_random_uuid())",
                    "DELETE FROM inbox.processed",
                    "CREATE TABLE inbox.mine (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                s.execute(sql)
    outsider = f"inbox_out_{ctx.name}"[:63]
    with cdb.admin() as c:
        c.execute(f'CREATE ROLE "{outsider}" LOGIN')
    try:
        with psycopg.connect(cdb.dsn.replace(cdb.role, outsider), autocommit=True) as o:
            for sql in ("SELECT inbox.record('c', gen_random_uuid())", "SELECT inbox.purge('1 day', 10)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    o.execute(sql)
    finally:
        with cdb.admin() as c:
            c.execute(f'DROP ROLE "{outsider}"')
