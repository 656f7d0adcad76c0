#!/usr/bin/env python3
"""outbox-relay benchmarks on a real PostgreSQL 15 and Kafka 4.1, every source mode side by
side in one run (each mode gets its own fresh database and topic, the same workload):

  backlog   N rows already pending (100 keys, PAYLOAD-byte payloads) when the relay starts:
            time until every row is marked published -> events/s; relay CPU seconds and
            peak RSS.
  steady    writers at a fixed rate (RATE events/s for SECONDS s) while the relay runs:
            end-to-end latency from the row's commit to the consumer (p50/p99/max),
            relay CPU per 1,000 events.

  integration/bench/bench.py [--events N] [--rate R] [--seconds S] [--modes polling,replication]

Loopback only, bounded in count and time; the servers and relays it starts are stopped on
exit. Figures depend on the machine: compare modes within one run, not across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Kafka, Postgres, Relay, start_all, wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def relay_config(dsn: str, bootstrap: str, mode: str) -> dict:
    return {
        "postgres": {"dsn": dsn},
        "kafka": {"bootstrap_servers": bootstrap, "properties": {"linger.ms": "5"}},
        "source": {"mode": mode, "polling": {"batch_size": 1000, "interval_ms": 500},
                   "replication": {"slot_name": f"bench_{mode}"}},
        "log": {"level": "warn"},
    }


class Setup:
    def __init__(self, pg: Postgres, kafka: Kafka, work: Path, mode: str, name: str):
        self.pg, self.kafka, self.mode = pg, kafka, mode
        self.db = f"bench_{name}_{mode}"
        self.topic = f"bench.{name}.{mode}"
        pg.drop_database(self.db)
        self.dsn = pg.create_database(self.db)
        kafka.create_topic(self.topic, partitions=6)
        self.relay = Relay(relay_config(self.dsn, kafka.bootstrap, mode), work / self.db,
                           name=self.db)
        r = self.relay.migrate()
        if r.returncode != 0:
            raise RuntimeError(r.stdout + r.stderr)

    def connect(self, autocommit: bool = True):
        return self.pg.connect(self.db, autocommit=autocommit)

    def pending(self) -> int:
        with self.connect() as c:
            return c.execute("SELECT count(*) FROM outbox.events "
                             "WHERE published_at IS NULL AND dead_lettered_at IS NULL").fetchone()[0]

    def close(self) -> None:
        self.relay.stop_quietly()
        with self.connect() as c:
            wait_until(lambda: not c.execute("SELECT count(*) FROM pg_replication_slots "
                                             "WHERE active AND database = current_database()"
                                             ).fetchone()[0], 30, 0.1, "slots released")
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE database = current_database()")
        self.pg.drop_database(self.db)


def bench_backlog(pg, kafka, work, mode: str, events: int, payload: int) -> dict:
    s = Setup(pg, kafka, work, mode, "backlog")
    try:
        with s.connect() as c:
            c.execute(
                "SELECT count(outbox.enqueue(%s, 'key-' || (g %% 100), "
                "convert_to(repeat('x', %s), 'UTF8'), '{\"type\":\"Bench\"}')) "
                "FROM generate_series(1, %s) g", (s.topic, payload, events))
        t0 = time.monotonic()
        s.relay.start()
        wait_until(lambda: s.pending() == 0, 600, 0.05, "backlog drained",
                   lambda: s.relay.assert_running("draining"))
        elapsed = time.monotonic() - t0
        pid = s.relay.pid
        result = {"events/s": events / elapsed, "seconds": elapsed,
                  "cpu s": proc_cpu_seconds(pid), "peak RSS MB": proc_peak_rss_mb(pid)}
        return result
    finally:
        s.close()


def bench_steady(pg, kafka, work, mode: str, rate: int, seconds: float, payload: int) -> dict:
    s = Setup(pg, kafka, work, mode, "steady")
    try:
        s.relay.start()
        # Warm-up: the producer's first id from the broker and the consumer's first fetch
        # are start-up costs, not the steady state measured here.
        with s.connect() as c:
            c.execute("SELECT outbox.enqueue(%s, 'w', 'w'::bytea)", (s.topic,))
        wait_until(lambda: s.pending() == 0, 60, 0.05, "warm-up event published")
        reader = kafka.reader(s.topic)
        reader.poll(0.5)
        total = int(rate * seconds)
        commit_times: dict[int, float] = {}
        lock = threading.Lock()

        def write():
            with s.connect(autocommit=False) as c:
                # The test servers run with synchronous_commit = off; a service would not,
                # and logical decoding only sees WAL once flushed.
                c.execute("SET synchronous_commit = on")
                c.commit()
                start = time.monotonic()
                for i in range(total):
                    due = start + i / rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)  # pacing the load, not synchronisation
                    c.execute("SELECT outbox.enqueue(%s, %s, convert_to(repeat('x', %s), 'UTF8'))",
                              (s.topic, f"key-{i % 100}", payload))
                    c.commit()
                    with lock:
                        commit_times[i] = time.time()

        cpu0 = proc_cpu_seconds(s.relay.pid)
        w = threading.Thread(target=write)
        w.start()
        latencies: list[float] = []
        relay_latencies: list[float] = []
        seen: set[str] = set()
        deadline = time.monotonic() + seconds + 60
        # Consumer arrival minus commit time; the single writer's i-th row has id i + 2 in
        # this fresh database (id 1 is the warm-up event).
        while len(seen) < total and time.monotonic() < deadline:
            for r in reader.poll(0.02):
                arrived = time.time()
                if r.event_id in seen or r.outbox_id == 1:  # a duplicate, or the warm-up
                    continue
                seen.add(r.event_id)
                with lock:
                    committed = commit_times.get(r.outbox_id - 2)  # id 1: the warm-up
                if committed is not None:
                    latencies.append(arrived - committed)
                    if r.timestamp_ms is not None:
                        relay_latencies.append(r.timestamp_ms / 1000 - committed)
        w.join()
        cpu = proc_cpu_seconds(s.relay.pid) - cpu0
        reader.close()
        if len(seen) < total:
            raise RuntimeError(f"{mode}: only {len(seen)} of {total} events arrived")
        latencies.sort()
        relay_latencies.sort()

        def q(values, p):
            return values[min(len(values) - 1, int(p * len(values)))] * 1000

        return {"p50 ms": q(latencies, 0.50), "p99 ms": q(latencies, 0.99),
                "max ms": latencies[-1] * 1000, "mean ms": statistics.fmean(latencies) * 1000,
                "relay p50 ms": q(relay_latencies, 0.5), "relay p99 ms": q(relay_latencies, 0.99),
                "cpu s/1k ev": cpu / total * 1000, "events": total}
    finally:
        s.close()


def table(title: str, results: dict[str, dict]) -> str:
    modes = list(results)
    keys = list(next(iter(results.values())))
    lines = [title, f"  {'':<14}" + "".join(f"{m:>14}" for m in modes)]
    for k in keys:
        lines.append(f"  {k:<14}" + "".join(f"{results[m][k]:>14.2f}" for m in modes))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="backlog size")
    ap.add_argument("--payload", type=int, default=200, help="payload bytes")
    ap.add_argument("--rate", type=int, default=500, help="steady writes per second")
    ap.add_argument("--seconds", type=float, default=10, help="steady duration")
    ap.add_argument("--modes", default="polling,replication")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]

    work = Path(tempfile.mkdtemp(prefix="outbox-bench."))
    os.chmod(work, 0o755)
    pg, kafka = Postgres(work / "servers"), Kafka(work / "servers")
    try:
        start_all([pg, kafka])
        print(f"outbox-relay bench: {args.events} backlog events, steady {args.rate}/s for "
              f"{args.seconds:.0f} s, {args.payload}-byte payloads, {os.cpu_count()} cores",
              flush=True)
        backlog = {m: bench_backlog(pg, kafka, work, m, args.events, args.payload) for m in modes}
        print(table("backlog drain", backlog), flush=True)
        steady = {m: bench_steady(pg, kafka, work, m, args.rate, args.seconds, args.payload)
                  for m in modes}
        print(table("steady state (commit -> consumer)", steady), flush=True)
        return 0
    finally:
        for s in (kafka, pg):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001
                print(f"stopping {type(s).__name__}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
