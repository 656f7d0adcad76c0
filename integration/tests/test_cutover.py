"""Cut-over from Debezium to outbox-relay on the real servers (docs/guide/coming-from-debezium.md,
"Cut over from Debezium"; the argument in relay/replication/takeover.h).

Debezium (Kafka Connect standalone + its PostgreSQL connector, pgoutput, outbox EventRouter)
relays outbox.events while a writer enqueues at a bounded rate; it is stopped (gracefully, or
with SIGKILL); `outbox-relay takeover` marks published what Debezium confirmed; the relay
starts. Then every row's event id is in Kafka, and exactly once except the rows Debezium sent
past its last confirmed position, which the test counts and bounds by the number of events
the takeover found decoded past that position (it printed it). Each step of the guide's
procedure is a step here.

The jars are fetched by integration/bench/fetch-debezium.sh (install-deps.sh runs it).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter

import pytest

from harness import debezium, enqueue, lsn_int, wait_until
# The Debezium-shaped table and the relay's options for Debezium's output (the guide's "A
# config that gives Debezium's output"), as the source-table tests use them.
from test_source_table import DEBEZIUM_MESSAGE, DEBEZIUM_TABLE

PUBLICATION = "dbz_publication"  # Debezium's default publication.name
RATE = 150  # rows per second the writer enqueues (one transaction each)


class PacedWriter:
    """One service-like writer at RATE rows/s, one row per transaction, on its own thread,
    until stop(): outbox.enqueue, or (source=True) an INSERT into the Debezium-shaped table
    public.outboxevent, every other one deleted in the same transaction as services written
    for Debezium do. Pacing is load shape only; nothing waits on it."""

    def __init__(self, ctx, topic: str, source: bool = False):
        self.ctx, self.topic, self.source = ctx, topic, source
        self.event_ids: list[str] = []
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "PacedWriter":
        self.thread.start()
        return self

    def _write(self, c, n: int) -> str:
        if not self.source:
            return c.execute("SELECT outbox.enqueue(%s::text, %s::text, %s::bytea)::text",
                             (self.topic, f"k{n % 8}", f'{{"n": {n}}}'.encode())).fetchone()[0]
        event_id = str(uuid.uuid4())
        with c.transaction():
            c.execute("INSERT INTO public.outboxevent (id, aggregatetype, aggregateid, type, payload) "
                      "VALUES (%s, %s, %s, 'Tick', %s::jsonb)", (event_id, self.topic, f"k{n % 8}", f'{{"n": {n}}}'))
            if n % 2:
                c.execute("DELETE FROM public.outboxevent WHERE id = %s", (event_id,))
        return event_id

    def _run(self) -> None:
        try:
            with self.ctx.pg.connect(self.ctx.db, autocommit=True, options=self.ctx.CONN_OPTIONS) as c:
                n = 0
                t0 = time.monotonic()
                while not self.stopped.is_set():
                    self.event_ids.append(self._write(c, n))
                    n += 1
                    self.stopped.wait(max(0.0, t0 + n / RATE - time.monotonic()))
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> list[str]:
        self.stopped.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error
        return list(self.event_ids)


def read_to_end(kafka, topic: str) -> list:
    """Every record of `topic` up to the high watermarks read now (once every row is marked,
    every message of both publishers is below them)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "cutover-watermarks"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()
    with kafka.reader(topic) as r:
        def done(records):
            last = {}
            for rec in records:
                last[rec.partition] = max(last.get(rec.partition, -1), rec.offset)
            return all(last.get(p, -1) >= h - 1 for p, h in high.items() if h > 0)

        assert r.wait_for(done, 60), f"topic {topic}: not read up to {high}"
        return list(r.records)


def event_id_of(record) -> str:
    """The relay sends the event id in header outbox-event-id, Debezium's EventRouter in "id"."""
    return record.headers.get("outbox-event-id") or record.headers["id"]


def takeover(relay, slot: str, *extra: str):
    return relay.command("takeover", "--slot", slot, "--publication", PUBLICATION, *extra, timeout_s=120)


def takeover_counts(stdout: str) -> tuple[int, int, int]:
    """(marked, decoded past the confirmed position, left pending) from takeover's output."""
    m = re.search(r"(\d+) marked published .*?; (\d+) events decoded past it; (\d+) rows left pending", stdout)
    assert m, stdout
    return int(m[1]), int(m[2]), int(m[3])


class Cutover:
    """One database, Debezium relaying either outbox.events (source=False, Debezium reading
    the relay's own table) or the Debezium-shaped table public.outboxevent (source=True, with
    its defaults: route by aggregatetype to outbox.event.<aggregatetype>, JsonConverter), a
    writer, and the relay configured for the same topics."""

    def __init__(self, ctx, source: bool):
        self.ctx, self.source = ctx, source
        self.slot = f"dbz_{ctx.name}"[:63]
        if source:
            with ctx.connect() as c:
                c.execute(DEBEZIUM_TABLE)
            self.row_topic = ctx.topic("order", create=False)
            self.topic = ctx.kafka.create_topic("outbox.event." + self.row_topic, 6)
            table, replacement = "public.outboxevent", "outbox.event.${routedByValue}"
            fields = dict(event_id="id", key="aggregateid", payload="payload", route_by="aggregatetype")
            converter = {"value.converter": "org.apache.kafka.connect.json.JsonConverter",
                         "value.converter.schemas.enable": "false"}
            self.relay = ctx.relay({"message": DEBEZIUM_MESSAGE,
                                    "source": {"tables": [{"table": "public.outboxevent"}]}})
        else:
            self.row_topic = self.topic = ctx.topic("events")
            table, replacement, fields, converter = "outbox.events", "${routedByValue}", {}, {}
            self.relay = ctx.relay()
        self.work = ctx.workdir / f"connect-{ctx.name}"
        self.work.mkdir(parents=True, exist_ok=True)
        worker = debezium.worker_properties(ctx.kafka.bootstrap, self.work, debezium.free_port(),
                                            offset_flush_interval_ms=1000)
        worker.update(converter)
        self.worker = worker
        # Debezium's messages carry no outbox-id (a real connector's do not): the audit tells
        # the rows it published by published_by.
        self.connector = debezium.outbox_connector("outbox", ctx.pg.port, ctx.db, self.slot, PUBLICATION, table,
                                                   replacement, poll_interval_ms=100, row_id_header=None, **fields)
        self.jars = debezium.jar_dir()
        self.connect = self.new_connect()
        self.writer = PacedWriter(ctx, self.row_topic, source=source)

    def new_connect(self) -> debezium.KafkaConnect:
        return debezium.KafkaConnect(self.work, self.worker, self.connector, self.jars)

    def start_debezium(self) -> None:
        self.connect.start()
        wait_until(lambda: (s := self.ctx.slot(self.slot)) is not None and s.active, 120, 0.2,
                   "Debezium streaming from its slot", self.connect.check)

    def start_under_load(self, messages: int):
        """Debezium started, then the writer; returns a reader of the topic once Debezium
        has published `messages`."""
        self.start_debezium()
        self.writer.start()
        reader = self.ctx.reader(self.topic)
        assert reader.wait_for(lambda recs: len(recs) >= messages, 120), self.connect.log_tail()
        return reader

    def wait_confirmed_past(self, lsn: int) -> None:
        """Until Debezium confirmed a position at or past lsn (it does at its offset commits)."""
        wait_until(lambda: (self.ctx.slot(self.slot).confirmed_flush_lsn or 0) >= lsn, 60, 0.2,
                   f"Debezium confirming {lsn:X}", self.connect.check)

    def stop_debezium(self, stop: str) -> int:
        (self.connect.stop if stop == "graceful" else self.connect.kill)()
        wait_until(lambda: not self.ctx.slot(self.slot).active, 60, 0.1, "Debezium's slot inactive")
        return self.ctx.slot(self.slot).confirmed_flush_lsn

    def migrate(self) -> int:
        """`outbox-relay migrate` installing the copy trigger; its installed_lsn."""
        r = self.relay.command("migrate")
        assert r.returncode == 0, r.stdout + r.stderr
        return lsn_int(self.ctx._query("SELECT installed_lsn::text FROM outbox.source_tables "
                                       "WHERE source_table = 'public.outboxevent'")[0][0])

    def pending(self, up_to_id: int | None = None) -> int:
        """Pending rows (up to id `up_to_id`)."""
        return self.ctx._query("SELECT count(*) FROM outbox.events WHERE published_at IS NULL "
                               "AND dead_lettered_at IS NULL AND id <= %s", (up_to_id or 2**62,))[0][0]

    def close(self) -> None:
        self.writer.stopped.set()
        self.connect.kill()

    def takeover_and_relay(self, confirmed: int) -> dict:
        """Steps 3 and 4 of the guide, then the audit of Kafka against what was written."""
        ctx, slot, relay = self.ctx, self.slot, self.relay
        # 3. The takeover; again (nothing more to mark; rows written since are past the
        # confirmed position), then with --drop-slot; then the slot is gone.
        r = takeover(relay, slot)
        assert r.returncode == 0, r.stdout + r.stderr
        print(r.stdout)
        marked, unconfirmed, _ = takeover_counts(r.stdout)
        assert marked > 0
        r2 = takeover(relay, slot, "--drop-slot")
        assert r2.returncode == 0, r2.stdout + r2.stderr
        assert takeover_counts(r2.stdout)[0] == 0, r2.stdout
        unconfirmed = max(unconfirmed, takeover_counts(r2.stdout)[1])
        assert "dropped slot" in r2.stdout and ctx.slot(slot) is None
        r3 = takeover(relay, slot)
        assert r3.returncode == 1 and "does not exist" in r3.stderr, r3.stdout + r3.stderr

        # 4. The relay publishes the rest while the writer goes on.
        last_id = ctx._query("SELECT coalesce(max(id), 0) FROM outbox.events")[0][0]
        relay.start()
        before = len(self.writer.event_ids)
        wait_until(lambda: len(self.writer.event_ids) > before + 50 and self.pending(last_id) == 0, 60, 0.2,
                   "the relay publishing while the writer goes on", relay.assert_running)
        written = self.writer.stop()
        wait_until(lambda: self.pending() == 0, 60, 0.2, "every row published", relay.assert_running)
        assert ctx._query("SELECT count(*) FROM outbox.events WHERE dead_lettered_at IS NOT NULL")[0][0] == 0

        records = read_to_end(ctx.kafka, self.topic)
        copies = Counter(event_id_of(rec) for rec in records)
        by_debezium = {rec.headers["id"] for rec in records if "outbox-event-id" not in rec.headers}
        taken = {row[0] for row in ctx._query(
            "SELECT event_id::text FROM outbox.events WHERE published_by = %s", (f"takeover of slot {slot}",))}
        lost = [e for e in written if copies[e] == 0]
        duplicates = sorted(e for e, n in copies.items() if n > 1)
        assert not lost, f"{len(lost)} rows lost, e.g. {lost[:5]}"
        assert set(copies) == set(written), "messages of events nobody wrote"
        assert max(copies.values()) <= 2, copies.most_common(3)
        # Rows the takeover marked: Debezium's one message, never the relay's.
        assert taken <= by_debezium and all(copies[e] == 1 for e in taken)
        # Every duplicate is a row Debezium sent past its confirmed position (left pending by
        # the takeover, published again by the relay): at most the events decoded past it.
        assert not (set(duplicates) & taken)
        assert len(duplicates) <= unconfirmed, (len(duplicates), unconfirmed)
        # The project's audit agrees: Debezium's messages carry no outbox-id, the rows the
        # takeover marked are told apart by published_by, not lost.
        a = relay.command("audit", "--json")
        assert a.returncode == 0, a.stdout + a.stderr
        report = json.loads(a.stdout)
        assert report["lost"] == 0 and report["published_by_other"] == len(taken), report
        assert report["foreign"] == len(by_debezium), report
        return {"rows": len(written), "taken": len(taken), "unconfirmed": unconfirmed,
                "duplicates": len(duplicates), "confirmed": confirmed}


def refused_while_in_use(c: Cutover) -> None:
    """The takeover refuses while Debezium holds its slot, and changes nothing."""
    r = takeover(c.relay, c.slot)
    assert r.returncode == 1 and "in use" in r.stderr and "stop Debezium" in r.stderr, r.stdout + r.stderr
    assert c.ctx._query("SELECT count(*) FROM outbox.events WHERE published_by IS NOT NULL")[0][0] == 0


def note(ctx, what: str, t0: float, got: dict) -> None:
    ctx.note(f"cut-over ({what}): {got['rows']} rows, {got['taken']} marked by takeover (Debezium "
             f"published them, confirmed {got['confirmed']:X}), {got['unconfirmed']} decoded past the "
             f"confirmed position, {got['duplicates']} duplicates, lost 0; {time.monotonic() - t0:.0f} s")


@pytest.mark.parametrize("stop", ["graceful", "sigkill"])
def test_debezium_table_copy_trigger_then_takeover_then_relay_every_row_once(ctx, stop):
    """The guide's procedure on a Debezium-shaped table: Debezium relays public.outboxevent
    under load (inserts, and inserts deleted in the same transaction); 1. migrate installs the
    copy trigger while it runs; 2. Debezium stopped (SIGTERM or SIGKILL) once it confirmed the
    trigger's installed_lsn; 3. takeover; 4. the relay. Nothing lost, the duplicates only rows
    Debezium had not confirmed."""
    t0 = time.monotonic()
    c = Cutover(ctx, source=True)
    try:
        reader = c.start_under_load(100)
        installed = c.migrate()  # 1.
        c.wait_confirmed_past(installed)
        assert reader.wait_for(lambda recs: len(recs) >= 300, 120), c.connect.log_tail()
        refused_while_in_use(c)
        confirmed = c.stop_debezium(stop)  # 2.
        got = c.takeover_and_relay(confirmed)  # 3. and 4.
    finally:
        c.close()
    note(ctx, f"source table, {stop}", t0, got)


def test_takeover_refused_until_debezium_confirmed_the_copy_trigger(ctx):
    """Debezium stopped before it confirmed the position where migrate installed the copy
    trigger: rows written before the trigger have no copy, so takeover refuses (nothing
    changed) and says to start Debezium again; started again and stopped once it confirmed
    that position, the takeover and the relay lose nothing."""
    t0 = time.monotonic()
    c = Cutover(ctx, source=True)
    try:
        c.start_under_load(100)
        c.stop_debezium("graceful")
        installed = c.migrate()  # too late: Debezium is stopped and confirms nothing more
        assert ctx.slot(c.slot).confirmed_flush_lsn < installed
        r = takeover(c.relay, c.slot)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "before the copy trigger of public.outboxevent was installed" in r.stderr, r.stderr
        assert "Start Debezium again" in r.stderr, r.stderr
        assert ctx._query("SELECT count(*) FROM outbox.events WHERE published_by IS NOT NULL")[0][0] == 0
        c.connect = c.new_connect()  # the same worker, offsets and slot
        c.start_debezium()
        c.wait_confirmed_past(installed)
        confirmed = c.stop_debezium("graceful")
        got = c.takeover_and_relay(confirmed)
    finally:
        c.close()
    note(ctx, "source table, refused then caught up", t0, got)


@pytest.mark.parametrize("stop", ["graceful", "sigkill"])
def test_debezium_on_outbox_events_then_takeover_then_relay_every_row_once(ctx, stop):
    """Debezium reading outbox.events itself (rows of outbox.enqueue) under load, stopped
    (SIGTERM or SIGKILL), takeover, the relay: nothing lost, the duplicates only rows Debezium
    had not confirmed."""
    t0 = time.monotonic()
    c = Cutover(ctx, source=False)
    try:
        c.start_under_load(300)
        first = ctx.slot(c.slot).confirmed_flush_lsn or 0
        c.wait_confirmed_past(first + 1)
        refused_while_in_use(c)
        confirmed = c.stop_debezium(stop)
        got = c.takeover_and_relay(confirmed)
    finally:
        c.close()
    note(ctx, f"outbox.events, {stop}", t0, got)


def test_a_row_committed_asynchronously_just_before_takeover_stays_pending(ctx):
    """Regression: takeover marked published a row committed with synchronous_commit off just
    before it ran, visible but with its commit record not yet flushed; logical decoding reads
    only flushed WAL, so the peek did not show it as past the slot's confirmed position and
    nobody ever sent it. The slot and publication are the other publisher's as Debezium makes
    them (pgoutput, FOR TABLE outbox.events); the WAL writer is slowed to its slowest (10 s)
    for the test so that the commit stays unflushed while takeover runs."""
    slot = f"dbz_{ctx.name}"[:63]
    topic = ctx.topic("events")
    relay = ctx.relay()
    with ctx.connect() as c:
        c.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE outbox.events")
        c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    with ctx.pg.connect("postgres", autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        admin.execute("SELECT pg_reload_conf()")
        try:
            with ctx.pg.connect(ctx.db, autocommit=True, options="-c synchronous_commit=off") as w:
                event_id = enqueue(w, topic, "k", b"late")
                commit_end = lsn_int(w.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
                unflushed = lsn_int(w.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]) < commit_end
            r = takeover(relay, slot)
        finally:
            admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            admin.execute("SELECT pg_reload_conf()")
    assert r.returncode == 0, r.stdout + r.stderr
    ctx.note(f"async commit unflushed when takeover started: {unflushed}")
    published_by = ctx._query("SELECT published_at IS NOT NULL, published_by FROM outbox.events "
                              "WHERE event_id = %s", (event_id,))[0]
    assert published_by == (False, None), f"marked without being sent: {published_by}\n{r.stdout}"
    assert "1 events decoded past it; 1 rows left pending" in r.stdout, r.stdout
    relay.start()
    ctx.wait_all_published(1, 30, relay)
    got = ctx.kafka.consume_all(topic, 1, 30)
    assert [m.event_id for m in got] == [event_id]
