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
from collections import Counter

import pytest

from harness import debezium, wait_until

PUBLICATION = "dbz_publication"  # Debezium's default publication.name
RATE = 150  # rows per second the writer enqueues (one transaction each)


class PacedWriter:
    """One service-like writer: outbox.enqueue at RATE rows/s, one row per transaction, on
    its own thread, until stop(). Pacing is load shape only; nothing waits on it."""

    def __init__(self, ctx, topic: str):
        self.ctx, self.topic = ctx, topic
        self.event_ids: list[str] = []
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "PacedWriter":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.ctx.pg.connect(self.ctx.db, autocommit=True, options=self.ctx.CONN_OPTIONS) as c:
                n = 0
                t0 = time.monotonic()
                while not self.stopped.is_set():
                    row = c.execute("SELECT outbox.enqueue(%s::text, %s::text, %s::bytea)::text",
                                    (self.topic, f"k{n % 8}", f'{{"n": {n}}}'.encode())).fetchone()
                    self.event_ids.append(row[0])
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


@pytest.mark.parametrize("stop", ["graceful", "sigkill"])
def test_debezium_on_outbox_events_then_takeover_then_relay_every_row_once(ctx, stop):
    """Debezium reading outbox.events under load, stopped (SIGTERM or SIGKILL), takeover,
    the relay: nothing lost, the duplicates only rows Debezium had not confirmed."""
    t_start = time.monotonic()
    topic = ctx.topic("events")
    slot = f"dbz_{ctx.name}"[:63]
    jars = debezium.jar_dir()
    work = ctx.workdir / f"connect-{ctx.name}"
    work.mkdir(parents=True, exist_ok=True)
    connect = debezium.KafkaConnect(
        work,
        debezium.worker_properties(ctx.kafka.bootstrap, work, debezium.free_port(), offset_flush_interval_ms=1000),
        debezium.outbox_connector("outbox", ctx.pg.port, ctx.db, slot, PUBLICATION, "outbox.events",
                                  "${routedByValue}", poll_interval_ms=100, row_id_header=None),
        jars)
    relay = ctx.relay()
    writer = PacedWriter(ctx, topic)
    try:
        # Debezium relays the table under load.
        connect.start()
        wait_until(lambda: (s := ctx.slot(slot)) is not None and s.active, 120, 0.2,
                   "Debezium streaming from its slot", connect.check)
        writer.start()
        reader = ctx.reader(topic)
        assert reader.wait_for(lambda recs: len(recs) >= 300, 120), connect.log_tail()
        # Debezium confirmed a position past some of them (offset commits every second).
        first = ctx.slot(slot).confirmed_flush_lsn or 0
        wait_until(lambda: (ctx.slot(slot).confirmed_flush_lsn or 0) > first, 60, 0.2,
                   "Debezium confirming a position", connect.check)

        # The takeover refuses while Debezium holds its slot, and changes nothing.
        r = takeover(relay, slot)
        assert r.returncode == 1 and "in use" in r.stderr and "stop Debezium" in r.stderr, r.stdout + r.stderr
        assert ctx._query("SELECT count(*) FROM outbox.events WHERE published_by IS NOT NULL")[0][0] == 0

        # 2. Stop Debezium (the writer goes on).
        (connect.stop if stop == "graceful" else connect.kill)()
        wait_until(lambda: not ctx.slot(slot).active, 60, 0.1, "Debezium's slot inactive")
        confirmed = ctx.slot(slot).confirmed_flush_lsn

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
        relay.start()
        first_relay = len(writer.event_ids)
        wait_until(lambda: ctx.marked() >= first_relay, 60, 0.2, "relay publishing", relay.assert_running)
        written = writer.stop()
        total = len(written)
        wait_until(lambda: ctx.counts() == (total, total), 60, 0.2, "every row published",
                   relay.assert_running)
    finally:
        writer.stopped.set()
        connect.kill()

    records = read_to_end(ctx.kafka, topic)
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
    # Every duplicate is a row Debezium sent past its confirmed position (left pending by the
    # takeover, published again by the relay): at most the events decoded past it.
    assert not (set(duplicates) & taken)
    assert len(duplicates) <= unconfirmed, (len(duplicates), unconfirmed)
    # The project's audit agrees: Debezium's messages carry no outbox-id (its header "id" is
    # the event id), the rows the takeover marked are told apart by published_by, not lost.
    a = relay.command("audit", "--json")
    assert a.returncode == 0, a.stdout + a.stderr
    report = json.loads(a.stdout)
    assert report["lost"] == 0 and report["published_by_other"] == len(taken), report
    assert report["foreign"] == len(by_debezium), report
    ctx.note(f"cut-over ({stop}): {total} rows, {len(taken)} marked by takeover (Debezium published them, "
             f"confirmed {confirmed:X}), {unconfirmed} decoded past the confirmed position, "
             f"{len(duplicates)} duplicates, lost 0; {time.monotonic() - t_start:.0f} s")
