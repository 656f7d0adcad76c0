"""The bench's rows and how it watches them arrive in Kafka.

Rows are written by server-side procedures (schema `bench` in each reader's database), so
the load costs no Python per row and is the same SQL for every reader:
  bench.fill    N rows in transactions of TX rows (the catch-up backlog)
  bench.select_and_mark   PostgreSQL alone: select + mark batches until none is pending
  bench.paced   one row per transaction at a fixed rate through outbox.enqueue, each payload
                starting with "PHASE;MICROSECONDS;" where MICROSECONDS is clock_timestamp()
                taken inside the transaction right before its COMMIT (the commit time)
"""

from __future__ import annotations

import threading
import time
from typing import Optional

BENCH_SQL = r"""
CREATE SCHEMA IF NOT EXISTS bench;

CREATE OR REPLACE PROCEDURE bench.fill(p_topic text, p_rows bigint, p_tx_rows int,
                                       p_keys int, p_bytes int)
LANGUAGE plpgsql AS $$
DECLARE
    first bigint := 0;
BEGIN
    WHILE first < p_rows LOOP
        INSERT INTO outbox.events (topic, key, payload)
        SELECT p_topic, 'key-' || (g % p_keys),
               convert_to(rpad('0;' || g || ';', p_bytes, 'x'), 'UTF8')
        FROM generate_series(first, least(first + p_tx_rows, p_rows) - 1) g;
        COMMIT;
        first := first + p_tx_rows;
    END LOOP;
END $$;

-- One writer: p_rate single-row transactions a second for p_seconds (keys writer + k*writers,
-- so no key is shared between writers). Falls behind rather than bursting: it stops at
-- p_seconds + 5 whatever it wrote. Returns the rows written.
CREATE OR REPLACE PROCEDURE bench.paced(p_topic text, p_rate float8, p_seconds float8,
                                        p_phase int, p_writer int, p_writers int, p_keys int,
                                        p_bytes int, INOUT written bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    t0 float8 := extract(epoch FROM clock_timestamp());
    total bigint := floor(p_rate * p_seconds);
    lag float8;
    i bigint := 0;
BEGIN
    -- A service's commit is durable before it returns, and logical decoding sees only
    -- flushed WAL: with the test server's synchronous_commit=off the WAL writer's 200 ms
    -- cycle would show up as latency.
    PERFORM set_config('synchronous_commit', 'on', false);
    WHILE i < total LOOP
        lag := t0 + i / p_rate - extract(epoch FROM clock_timestamp());
        IF lag > 0.001 THEN
            PERFORM pg_sleep(lag);
        ELSIF lag < -5 THEN
            EXIT;  -- cannot keep up: stop, the caller reports the rate reached
        END IF;
        PERFORM outbox.enqueue(p_topic, 'key-' || ((i * p_writers + p_writer) % p_keys),
            convert_to(rpad(p_phase || ';' ||
                            floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint || ';',
                            p_bytes, 'x'), 'UTF8'));
        COMMIT;
        i := i + 1;
    END LOOP;
    written := i;
END $$;

-- PostgreSQL's own floor for the polling path: select a batch of pending rows in id order
-- (with their payloads), mark it published, commit; until none is left. No Kafka.
CREATE OR REPLACE PROCEDURE bench.select_and_mark(p_batch int, INOUT marked bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    bytes bigint;
BEGIN
    LOOP
        SELECT array_agg(id), sum(length(payload)) INTO ids, bytes FROM (
            SELECT id, payload FROM outbox.events
            WHERE published_at IS NULL AND dead_lettered_at IS NULL
            ORDER BY id LIMIT p_batch FOR UPDATE) b;
        EXIT WHEN ids IS NULL;
        UPDATE outbox.events SET published_at = now() WHERE id = ANY (ids);
        marked := marked + cardinality(ids);
        COMMIT;
    END LOOP;
END $$;
"""


def install(conn) -> None:
    conn.execute(BENCH_SQL)


def fill(conn, topic: str, rows: int, tx_rows: int, keys: int, payload_bytes: int) -> None:
    conn.execute("CALL bench.fill(%s, %s, %s, %s, %s)", (topic, rows, tx_rows, keys, payload_bytes))


class TopicCounter:
    """Messages in a topic = sum of its partitions' high watermarks (the topic is the
    reader's own and starts empty; idempotent producers add no duplicates)."""

    def __init__(self, bootstrap: str, topic: str):
        from confluent_kafka import Consumer

        self.topic = topic
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-counter",
                            "enable.auto.commit": False, "log_level": 3})
        md = self._c.list_topics(topic, timeout=10)
        self._parts = sorted(md.topics[topic].partitions)

    def ends(self) -> dict[int, int]:
        """High watermark per partition; retries transient errors (a leader not known yet
        right after the topic was created) for at most 30 s."""
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + 30
        while True:
            try:
                return {p: self._c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10,
                                                         cached=False)[1] for p in self._parts}
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def count(self) -> int:
        return sum(self.ends().values())

    def close(self) -> None:
        self._c.close()


class LatencyConsumer(threading.Thread):
    """Reads one topic from given offsets and records, for each message of `phase`, the
    consumer's receive time minus the commit time in its payload (seconds), and the split of
    that time at the message's Kafka timestamp (CreateTime: set by the producer when the
    relay hands it the message, millisecond resolution):
      to_produce   commit -> handed to the producer (wake-up, read, mapping)
      to_consumer  handed to the producer -> received here (linger, broker append and
                   replication, acknowledgement, fetch)
    The consumer must not be the limit: fetch.wait.max.ms is short (the broker answers a
    fetch at once when data is there anyway; this only bounds an empty fetch that missed a
    wake-up), the loop returns at the first message, and its own CPU time is recorded."""

    def __init__(self, bootstrap: str, topic: str, offsets: dict[int, int], phase: int):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.phase = str(phase).encode()
        self.latencies: list[float] = []
        self.to_produce: list[float] = []
        self.to_consumer: list[float] = []
        self.other = 0  # messages of no phase or another phase
        self.last_arrival: Optional[float] = None
        self.cpu_s = 0.0  # this thread's own CPU time
        self._halt = threading.Event()
        self._error: Optional[BaseException] = None
        self._c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-latency-{topic}-{phase}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.min.bytes": 1,
            "fetch.error.backoff.ms": 10,
            "log_level": 3,
        })
        self._c.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])

    def run(self) -> None:
        from confluent_kafka import TIMESTAMP_CREATE_TIME

        t_cpu = time.thread_time()
        try:
            while not self._halt.is_set():
                # poll() returns at the first message; consume(timeout=0) then takes what is
                # already queued (consume with a timeout would wait for a full batch).
                first = self._c.poll(0.05)
                if first is None:
                    continue
                now = time.time()
                msgs = [first] + self._c.consume(num_messages=10000, timeout=0)
                for m in msgs:
                    if m.error() is not None:
                        continue
                    v = m.value() or b""
                    parts = v.split(b";", 2)
                    if len(parts) == 3 and parts[0] == self.phase:
                        committed = int(parts[1]) / 1e6
                        self.latencies.append(now - committed)
                        ts_type, ts_ms = m.timestamp()
                        if ts_type == TIMESTAMP_CREATE_TIME and ts_ms > 0:
                            self.to_produce.append(ts_ms / 1e3 - committed)
                            self.to_consumer.append(now - ts_ms / 1e3)
                    else:
                        self.other += 1
                self.last_arrival = now
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self._error = e
        finally:
            self.cpu_s = time.thread_time() - t_cpu
            self._c.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)
        if self._error is not None:
            raise RuntimeError(f"latency consumer failed: {self._error}") from self._error


def quantile_ms(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[i] * 1000


def sample_messages(bootstrap: str, topic: str, count: int = 50, timeout_s: float = 30) -> list:
    """The first `count` messages of the topic (any partitions), to check their shape."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-sample-{topic}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 3})
    try:
        c.subscribe([topic])
        out: list = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append(m)
        return out
    finally:
        c.close()


def check_messages(msgs: list, payload_bytes: int) -> list[str]:
    """What differs from an outbox message of the bench: key key-N, payload of the bench's
    size, an outbox-id header. Warm-up and marker rows are skipped."""
    problems = []
    for m in msgs:
        key = (m.key() or b"").decode(errors="replace")
        if key in ("warmup", "marker"):
            continue
        headers = dict(m.headers() or [])
        if not key.startswith("key-"):
            problems.append(f"key {key!r}")
        if len(m.value() or b"") != payload_bytes:
            problems.append(f"payload of {len(m.value() or b'')} bytes")
        if "outbox-id" not in headers:
            problems.append(f"no outbox-id header (headers {sorted(headers)})")
    return problems[:5]


# ------------------------------------------------------------------ the relay's histograms
def scrape_histograms(text: str, names: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """Cumulative (upper bound, count) buckets of the named histograms in a Prometheus text
    exposition, summed over label sets other than le."""
    out: dict[str, dict[float, float]] = {n: {} for n in names}
    for line in text.splitlines():
        if line.startswith("#") or "_bucket{" not in line:
            continue
        name, rest = line.split("_bucket{", 1)
        if name not in out:
            continue
        labels, value = rest.rsplit("} ", 1)
        le = next((x.split("=", 1)[1].strip('"') for x in labels.split(",") if x.startswith("le=")), None)
        if le is None:
            continue
        bound = float("inf") if le == "+Inf" else float(le)
        out[name][bound] = out[name].get(bound, 0.0) + float(value)
    return {n: sorted(b.items()) for n, b in out.items()}


def histogram_delta(after: list, before: list) -> list[tuple[float, float]]:
    b = dict(before)
    return [(le, c - b.get(le, 0.0)) for le, c in after]


def histogram_quantile_ms(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket the quantile falls in (the
    relay's buckets double from 1 ms, so this is within a factor of 2)."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    total = buckets[-1][1]
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return lo_bound * 1000
            span = c - lo_count
            frac = (rank - lo_count) / span if span > 0 else 1.0
            return (lo_bound + (le - lo_bound) * frac) * 1000
        lo_bound, lo_count = le, c
    return float("nan")
