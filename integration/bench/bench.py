#!/usr/bin/env python3
"""outbox-relay side by side with Debezium, on one PostgreSQL 15 and one Kafka 4.1 that the
bench starts itself (integration/harness), the same rows for every reader, in one run.

Readers (--readers, in this order): polling and replication (outbox-relay in that source
mode), debezium (Kafka Connect standalone + Debezium's PostgreSQL connector + its outbox
EventRouter, jars fetched from Maven Central on first use), and pgfloor (no reader:
PostgreSQL alone selecting and marking the same backlog, the floor of the polling path).
Each reader runs alone, in its own database and topic, one after the other (a reader named
twice runs twice, the second shown as <reader>#2), after a warm-up that runs until the
broker's CPU per event stops falling and its JIT compiler is quiet (warm_up):

  1. prime     start it, let it publish one warm-up row (slot and position exist), stop it
  2. drain     commit --rows rows (200-byte payloads, --keys keys, --tx-rows a transaction)
               while it is stopped, start it: events/s until the last is in Kafka (for
               outbox-relay: and marked published), CPU seconds per 100k events
  3. steady    --rates events/s for --duration s each (single-row transactions through
               outbox.enqueue, synchronous_commit=on): commit-to-consumer latency
               p50/p99/p99.9/max measured by a consumer (commit time in the payload)
  4. cost      CPU seconds per 100k events (drain and steady), peak RSS of its process tree
  5. audit     outbox-relay audit --json on its topic (ours only): lost must be 0

  integration/bench/bench.py [--rows N] [--rates 1000,5000,20000] [--duration S]
                             [--readers polling,replication,debezium,pgfloor] [--json FILE]
                             [--pg-set KEY=VALUE ...] [--no-warmup | --warmup-max-s S]
  integration/bench/bench.py --smoke      # seconds: our two modes, 2,000 rows, 200 events/s

Loopback only, every wait bounded, every process it starts stopped by pid on exit, Ctrl-C and
SIGTERM included. Exit 0 when every reader finished and our audits found nothing lost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness import Kafka, Postgres, relay_binary, start_all  # noqa: E402
from harness.servers import REPO_DIR, ServerError  # noqa: E402

import load  # noqa: E402
import procstat  # noqa: E402
from readers import ROW_TOPIC, DebeziumReader, RelayPairReader, RelayReader  # noqa: E402

ALL_READERS = ("polling", "replication", "debezium", "pgfloor", "polling-eos", "replication-eos",
               "polling-x2")
RELAY_READERS = ("polling", "replication", "polling-eos", "replication-eos", "polling-x2")
BASE_READERS = ("polling", "replication", "polling-eos", "replication-eos")
BASE_SUFFIX = "-base"  # one of BASE_READERS run by --baseline-bin


def kind(reader: str) -> str:
    """What a reader name runs, without its instance number ("polling#2": polling)."""
    return reader.split("#", 1)[0]


def base_name(reader: str) -> str:
    """The reader a -base name runs ("polling-eos-base", "polling-eos-base#2": polling-eos)."""
    reader = kind(reader)
    return reader[: -len(BASE_SUFFIX)] if reader.endswith(BASE_SUFFIX) else reader


def number_repeats(readers: list[str]) -> list[str]:
    """A reader named again is another instance of it: polling,polling -> polling, polling#2."""
    seen: dict[str, int] = {}
    out = []
    for r in readers:
        seen[r] = seen.get(r, 0) + 1
        out.append(r if seen[r] == 1 else f"{r}#{seen[r]}")
    return out


class BenchError(RuntimeError):
    pass


PG_SET_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def parse_pg_set(items: list[str]) -> dict[str, str]:
    """--pg-set KEY=VALUE items as {KEY: VALUE}; ValueError naming the first bad one. VALUE
    as postgresql.conf takes it; no ';' (pg.sh's separator) and no line break."""
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = (x.strip() for x in item.partition("="))
        if not sep or not PG_SET_KEY.match(k) or not v or ";" in v or "\n" in v:
            raise ValueError(f"{item!r} is not KEY=VALUE: a server setting's name and its value as "
                             f"postgresql.conf takes it, without ';' (e.g. max_wal_size=4GB, "
                             f"\"log_line_prefix='%m '\")")
        out[k] = v
    return out


def pg_conf(settings: dict[str, str]) -> str:
    """The settings as integration/env/pg.sh's OUTBOX_PG_CONF takes them."""
    return ";".join(f"{k} = {v}" for k, v in settings.items())


def pg_settings_shown(pg, settings: dict[str, str]) -> dict[str, str]:
    """The settings as the running server reports them (current_setting), so a result says
    what server it ran on."""
    with pg.connect("postgres", autocommit=True) as c:
        return {k: c.execute("SELECT current_setting(%s)", (k,)).fetchone()[0] for k in settings}


def pg_settings_text(shown: dict[str, str]) -> str:
    """" with k=v, k2='v 2'" for the header line: a value that is empty or has a space or a
    comma in quotes."""
    def value(v: str) -> str:
        return f"'{v}'" if not v or any(c in v for c in " ,") else v
    return f" with {', '.join(f'{k}={value(v)}' for k, v in shown.items())}" if shown else ""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def poll_until(probe, timeout_s: float, what: str, check=None, interval_s: float = 0.05):
    """probe() until truthy (returned), check() each round; BenchError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        v = probe()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


# ------------------------------------------------------------------------------ profile
class Profiler:
    """`perf record -g` of given pids (outbox-relay and the PostgreSQL processes serving it)
    from the first message of a drain to its end; `perf report` summary to a text file."""

    def __init__(self, out_dir: Path, name: str):
        self.data = out_dir / f"{name}-drain.perf.data"
        self.report = out_dir / f"{name}-drain.txt"
        self.proc = None

    def start(self, pids: list[int]) -> None:
        self.proc = subprocess.Popen(
            ["perf", "record", "-F", "499", "-g", "-o", str(self.data), "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        with open(self.report, "w") as f:
            for sort in ("comm,dso", "comm,dso,sym"):
                f.write(f"===== perf report --sort {sort} (self time, >= 0.5%)\n")
                f.flush()
                subprocess.run(["perf", "report", "-i", str(self.data), "--stdio", "--no-children",
                                "-g", "none", "--percent-limit", "0.5", "--sort", sort],
                               stdout=f, stderr=subprocess.DEVNULL, timeout=300)


def postgres_pids(pg) -> list[int]:
    return procstat.descendants(pg.pid) if pg.pid else []


# ------------------------------------------------------------------------------ phases
def prime(reader, counter: load.TopicCounter, timeout_s: float) -> int:
    """Start the reader, let it publish a warm-up row, stop it. Returns the topic's count.
    Debezium creates its slot only once started: a warm-up row is written every 2 s until
    one arrives."""
    reader.start()
    last_write = 0.0

    def arrived():
        nonlocal last_write
        if time.monotonic() - last_write > 2:
            with reader.connect() as c:
                c.execute("SELECT outbox.enqueue(%s, 'warmup', 'warmup'::bytea)", (ROW_TOPIC,))
            last_write = time.monotonic()
        return counter.count() > 0

    poll_until(arrived, timeout_s, f"{reader.name}: warm-up row in Kafka", reader.check, 0.1)
    poll_until(reader.all_marked, timeout_s, f"{reader.name}: warm-up rows marked", reader.check, 0.1)
    # Debezium confirms positions with its offsets (flushed every second, and at stop).
    reader.stop()
    return counter.count()


def drain(reader, counter, base: int, rows: int, pg, kafka, timeout_s: float,
          profiler: Profiler | None = None) -> dict:
    pg_cpu, kafka_cpu = procstat.PgCpuMeter(lambda: pg.pid).start(), procstat.CpuMeter(lambda: kafka.pid).start()
    t0 = time.monotonic()
    reader.start()
    state = {"first": None, "first_cpu": 0.0}
    target = base + rows

    def in_kafka():
        n = counter.count()
        if state["first"] is None and n > base:
            state["first"] = time.monotonic()
            state["first_cpu"] = procstat.tree_cpu_seconds(reader.pid)
            if profiler is not None:
                profiler.start([reader.pid] + postgres_pids(pg))
        return n >= target

    result: dict = {"rows": rows}
    try:
        poll_until(in_kafka, timeout_s, f"{reader.name}: {rows} rows in Kafka", reader.check)
    except BenchError as e:
        result.update(error=str(e), in_kafka=counter.count() - base)
        return result
    t_kafka = time.monotonic()
    cpu_kafka = procstat.tree_cpu_seconds(reader.pid)
    t_marked = None
    if reader.ours:
        try:
            poll_until(reader.all_marked, max(10.0, timeout_s - (t_kafka - t0)),
                       f"{reader.name}: all rows marked", reader.check)
            t_marked = time.monotonic()
        except BenchError as e:
            result["error"] = str(e)
    t_end = t_marked or t_kafka
    cpu = procstat.tree_cpu_seconds(reader.pid)
    if profiler is not None:
        profiler.stop()
        result["profile"] = str(profiler.report)
    first = state["first"] or t_kafka
    pg_cpu.stop()
    result.update(
        seconds_to_first=first - t0,
        seconds_to_last_in_kafka=t_kafka - t0,
        seconds_to_all_marked=(t_marked - t0) if t_marked else None,
        events_per_s=rows / (t_end - t0),
        events_per_s_in_kafka=rows / (t_kafka - t0),
        events_per_s_first_to_last=rows / max(1e-3, t_kafka - first),
        cpu_s=cpu,
        cpu_s_per_100k=cpu / rows * 1e5,
        cpu_s_per_100k_first_to_last=(cpu_kafka - state["first_cpu"]) / rows * 1e5,
        pg_cpu_s_per_100k=pg_cpu.seconds() / rows * 1e5,
        pg_cpu_s_per_100k_by_kind={k: v / rows * 1e5 for k, v in pg_cpu.by_kind().items()},
        kafka_cpu_s_per_100k=kafka_cpu.seconds() / rows * 1e5,
        peak_rss_mb=procstat.tree_peak_rss_mb(reader.pid),
        messages_extra=counter.count() - target,  # > 0: duplicates
    )
    return result


def steady(reader, counter, pg, kafka, rate: int, phase: int, duration: float, keys: int,
           payload: int, tail_timeout_s: float, cancel: list) -> dict:
    writers = max(1, math.ceil(rate / 2000))
    consumer = load.LatencyConsumer(kafka.bootstrap, reader.topic, counter.ends(), phase)
    consumer.start()
    written = [0] * writers
    errors: list[BaseException] = []
    conns = [reader.connect(autocommit=True) for _ in range(writers)]
    cancel.extend(conns)

    def write(i: int):
        try:
            written[i] = conns[i].execute(
                "CALL bench.paced(%s, %s, %s, %s, %s, %s, %s, %s)",
                (ROW_TOPIC, rate / writers, duration, phase, i, writers, keys, payload)).fetchone()[0]
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    meters = [procstat.CpuMeter(lambda: reader.pid).start(), procstat.CpuMeter(lambda: pg.pid).start(),
              procstat.CpuMeter(lambda: kafka.pid).start()]
    hist_before = _relay_histograms(reader)
    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(writers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
                reader.check()
        t_written = time.monotonic()
        wall_written = time.time()
        if errors:
            raise BenchError(f"writer failed: {errors[0]}")
        total = sum(written)
        try:
            poll_until(lambda: len(consumer.latencies) >= total, tail_timeout_s,
                       f"{reader.name}: {total} events of {rate}/s at the consumer", reader.check)
        except BenchError:
            pass  # reported as delivered < written
        cpu = [m.seconds() for m in meters]
        hist_after = _relay_histograms(reader)
    finally:
        consumer.stop()
        for c in conns:
            cancel.remove(c)
            c.close()
    lat = sorted(consumer.latencies)
    delivered = len(lat)
    reached = total / max(1e-3, t_written - t0)
    tail = (consumer.last_arrival - wall_written) if consumer.last_arrival else float("nan")
    return {
        "rate": rate,
        "writers": writers,
        "written": total,
        "commits_per_s": reached,
        "delivered": delivered,
        "p50_ms": load.quantile_ms(lat, 0.50),
        "p99_ms": load.quantile_ms(lat, 0.99),
        "p999_ms": load.quantile_ms(lat, 0.999),
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "tail_s": tail,
        # kept up: every event arrived, within a second of the last commit, and the writers
        # reached 95% of the rate (on 2 shared cores they may not)
        "sustained": delivered >= total and tail <= 1.0 and reached >= 0.95 * rate,
        "cpu_s_per_100k": cpu[0] / max(1, total) * 1e5,
        "pg_cpu_s_per_100k": cpu[1] / max(1, total) * 1e5,
        "kafka_cpu_s_per_100k": cpu[2] / max(1, total) * 1e5,
        "stages": _stages(consumer, hist_before, hist_after),
        "consumer_cpu_s": consumer.cpu_s,
        "consumer_cpu_share": consumer.cpu_s / max(1e-3, time.monotonic() - t0),
    }


STAGE_HISTOGRAMS = ("outbox_relay_read_duration_seconds", "outbox_relay_publish_duration_seconds",
                    "outbox_relay_mark_duration_seconds")


def _relay_histograms(reader):
    text = reader.metrics_text()
    return load.scrape_histograms(text, STAGE_HISTOGRAMS) if text else None


def _stages(consumer, before, after) -> dict:
    """Where the commit -> consumer time goes, as p50/p99 ms per stage:
      commit_to_produce    per event: commit (payload) -> Kafka CreateTime (the relay handed it
                           to its producer): wake-up, the read, mapping
      produce_to_consumer  per event: CreateTime -> received by the bench's consumer: linger,
                           broker append, acknowledgement, fetch
      read                 per batch (relay histogram): the SELECT of one batch
      produce_to_ack       per event (relay histogram): handed to the producer -> delivery
                           report (linger + broker round trip with acks=all)
      mark                 per batch (relay histogram): the mark transaction (after the ack;
                           not on the commit -> consumer path, but it holds the next read
                           when the relay waits for it)
    The relay's histograms have buckets doubling from 1 ms: their quantiles are interpolated
    within a bucket (Prometheus' histogram_quantile), so within a factor of 2; ms resolution
    for CreateTime."""
    out: dict = {}
    for name, values in (("commit_to_produce", consumer.to_produce),
                         ("produce_to_consumer", consumer.to_consumer)):
        v = sorted(values)
        out[name] = {"p50_ms": load.quantile_ms(v, 0.50), "p99_ms": load.quantile_ms(v, 0.99), "n": len(v)}
    if before is not None and after is not None:
        for key, name in (("read", STAGE_HISTOGRAMS[0]), ("produce_to_ack", STAGE_HISTOGRAMS[1]),
                          ("mark", STAGE_HISTOGRAMS[2])):
            d = load.histogram_delta(after.get(name, []), before.get(name, []))
            out[key] = {"p50_ms": load.histogram_quantile_ms(d, 0.50),
                        "p99_ms": load.histogram_quantile_ms(d, 0.99), "n": d[-1][1] if d else 0}
    return out


def pg_floor(pg, work: Path, run_id: str, args, name: str = "pgfloor") -> dict:
    """PostgreSQL alone: the same backlog selected (with payloads) and marked in batches."""
    slug = name.replace("#", "-")
    db = f"bench_{run_id}_{slug.replace('-', '_')}"
    from harness import Relay

    pg.drop_database(db)
    dsn = pg.create_database(db)
    try:
        r = Relay({"postgres": {"dsn": dsn}, "kafka": {"bootstrap_servers": "127.0.0.1:9"}},
                  work / slug, name="migrate").command("migrate")
        if r.returncode != 0:
            raise BenchError(f"migrate failed: {r.stdout}{r.stderr}")
        with pg.connect(db, autocommit=True) as c:
            load.install(c)
            t = time.monotonic()
            load.fill(c, ROW_TOPIC, args.rows, args.tx_rows, args.keys, args.payload)
            fill_s = time.monotonic() - t
            meter = procstat.PgCpuMeter(lambda: pg.pid).start()
            t = time.monotonic()
            marked = c.execute("CALL bench.select_and_mark(%s)", (args.floor_batch,)).fetchone()[0]
            secs = time.monotonic() - t
            meter.stop()
        return {"drain": {"rows": args.rows, "fill_s": fill_s, "marked": marked, "seconds": secs,
                          "events_per_s": marked / secs, "batch": args.floor_batch,
                          "pg_cpu_s_per_100k": meter.seconds() / max(1, marked) * 1e5,
                          "pg_cpu_s_per_100k_by_kind": {k: v / max(1, marked) * 1e5
                                                        for k, v in meter.by_kind().items()}}}
    finally:
        pg.drop_database(db)


def run_reader(reader, pg, kafka, args, cancel: list, out: dict) -> None:
    """Fills `out` as it goes, so a failure keeps what was measured before it."""
    say(f"{reader.name}: database {reader.db}, topic {reader.topic}")
    reader.setup(args.partitions)
    counter = load.TopicCounter(kafka.bootstrap, reader.topic)
    try:
        base = prime(reader, counter, args.start_timeout)
        t = time.monotonic()
        with reader.connect() as c:
            load.fill(c, ROW_TOPIC, args.rows, args.tx_rows, args.keys, args.payload)
            if args.analyze:
                c.execute("ANALYZE outbox.events")
        fill_s = time.monotonic() - t
        say(f"{reader.name}: {args.rows:,} rows committed in {fill_s:.1f} s; starting it")
        profiler = Profiler(Path(args.perf), reader.slug) if args.perf and reader.ours else None
        try:
            d = drain(reader, counter, base, args.rows, pg, kafka, args.drain_timeout, profiler)
        finally:
            if profiler is not None and profiler.proc is not None:
                profiler.stop()
        d["fill_s"] = fill_s
        out["drain"] = d
        if "error" in d:
            say(f"{reader.name}: drain FAILED: {d['error']}")
        else:
            say(f"{reader.name}: drain {d['events_per_s']:,.0f} events/s "
                f"({d['seconds_to_all_marked'] or d['seconds_to_last_in_kafka']:.1f} s), "
                f"{d['events_per_s_first_to_last']:,.0f}/s first to last message")
        # Settle: a marker row committed now reaches Kafka once the reader has processed all
        # the WAL of the backlog (replication re-reads it after publishing the pending rows).
        t = time.monotonic()
        with reader.connect() as c:
            c.execute("SELECT outbox.enqueue(%s, 'marker', 'marker'::bytea)", (ROW_TOPIC,))
        poll_until(lambda: counter.count() >= base + args.rows + 1, args.drain_timeout,
                   f"{reader.name}: a row committed after the drain", reader.check)
        d["settle_s"] = time.monotonic() - t
        msgs = load.sample_messages(kafka.bootstrap, reader.topic)
        d["message_problems"] = load.check_messages(msgs, args.payload)
        d["sample_headers"] = sorted({k for m in msgs for k, _ in (m.headers() or [])})
        if d["message_problems"] or not msgs:
            raise BenchError(f"{reader.name}: messages not as expected: {d['message_problems'] or 'none read'}")
        if isinstance(reader, DebeziumReader):
            p = out["producer"] = reader.producer_settings()
            if p.get("acks") not in ("-1", "all") or p.get("enable.idempotence") != "true":
                raise BenchError(f"Debezium's producer is not idempotent with acks=all: {p}")
        peak = d.get("peak_rss_mb", 0.0)
        out["steady"] = {}
        if "error" not in d:
            for i, rate in enumerate(args.rates, start=1):
                s = steady(reader, counter, pg, kafka, rate, i, args.duration, args.keys, args.payload,
                           args.tail_timeout, cancel)
                out["steady"][str(rate)] = s
                say(f"{reader.name}: {rate}/s -> {s['commits_per_s']:,.0f} commits/s, p50 {s['p50_ms']:.1f} "
                    f"p99 {s['p99_ms']:.1f} p99.9 {s['p999_ms']:.1f} ms, "
                    f"{s['delivered']}/{s['written']} delivered{'' if s['sustained'] else ' (NOT sustained)'}")
        peak = max(peak, procstat.tree_peak_rss_mb(reader.pid) if reader.pid else 0.0)
        out["peak_rss_mb"] = peak
        reader.stop()
        if reader.ours:
            a = reader.audit()
            out["audit"] = a
            say(f"{reader.name}: audit exit {a.get('exit_code')}: lost={a.get('lost')} "
                f"duplicates={a.get('duplicates')} order_violations={a.get('order_violations')}")
    finally:
        counter.close()
        reader.cleanup()


# ------------------------------------------------------------------------------ report
def machine_notes(pg, pg_settings: dict[str, str]) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    with pg.connect("postgres", autocommit=True) as c:
        pg_version = c.execute("SHOW server_version").fetchone()[0]
    rev = subprocess.run(["git", "-C", str(REPO_DIR), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    pom = (REPO_DIR / "integration/env/kafka-pom.xml").read_text()
    dpom = (HERE / "debezium-pom.xml").read_text()

    def tag(text, name):
        return text.split(f"<{name}>", 1)[1].split("<", 1)[0] if f"<{name}>" in text else ""

    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "loadavg_start": os.getloadavg(), "postgres": pg_version,
            "pg_settings": pg_settings_shown(pg, pg_settings), "kafka": tag(pom, "kafka.version"),
            "debezium": tag(dpom, "debezium.version"), "connect": tag(dpom, "connect.version"),
            "relay_binary": str(relay_binary()), "git": rev}


def fmt(v, spec=",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return format(v, spec)


STAGE_LABELS = (("commit_to_produce", "commit -> produce"), ("produce_to_consumer", "produce -> consumer"),
                ("read", "  relay: read/batch"), ("produce_to_ack", "  relay: produce -> ack"),
                ("mark", "  relay: mark/batch"))


def _pair(stage: dict) -> str:
    a, b = stage.get("p50_ms"), stage.get("p99_ms")
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a:.1f}/{b:.1f}"


def table(results: dict, args) -> str:
    names = [n for n in args.readers if n in results]
    w = 14
    lines = []

    def row(label, getter, spec=",.0f"):
        vals = []
        for n in names:
            try:
                vals.append(fmt(getter(results[n]), spec))
            except (KeyError, TypeError):
                vals.append("-")
        lines.append(f"{label:<44}" + "".join(f"{v:>{w}}" for v in vals))

    lines.append(f"{'':<44}" + "".join(f"{n:>{w}}" for n in names))
    lines.append(f"catch-up drain of {args.rows:,} rows ({args.payload} B, {args.keys:,} keys, "
                 f"{args.tx_rows} rows/tx)")
    row("  events/s, start to last in Kafka", lambda r: r["drain"]["events_per_s_in_kafka"])
    row("  events/s, start to last marked (ours)", lambda r: r["drain"]["events_per_s"] if r["drain"].get(
        "seconds_to_all_marked") or "marked" in r["drain"] else None)
    row("  events/s, first to last message", lambda r: r["drain"]["events_per_s_first_to_last"])
    row("  s, start to first message", lambda r: r["drain"]["seconds_to_first"], ".2f")
    row("  s, then until a new row arrives (settle)", lambda r: r["drain"]["settle_s"], ".2f")
    row("  CPU s / 100k events (reader)", lambda r: r["drain"]["cpu_s_per_100k"], ".2f")
    row("  CPU s / 100k events, first to last", lambda r: r["drain"]["cpu_s_per_100k_first_to_last"], ".2f")
    row("  PostgreSQL CPU s / 100k events", lambda r: r["drain"]["pg_cpu_s_per_100k"], ".2f")
    for key, label in procstat.PG_KINDS:  # the parts of the line above
        row(f"    {label}", lambda r, k=key: r["drain"]["pg_cpu_s_per_100k_by_kind"][k], ".2f")
    row("  broker CPU s / 100k events", lambda r: r["drain"]["kafka_cpu_s_per_100k"], ".2f")
    for rate in args.rates:
        k = str(rate)
        lines.append(f"steady {rate:,} events/s for {args.duration:g} s, commit -> consumer")
        row("  commits/s reached", lambda r: r["steady"][k]["commits_per_s"])
        row("  p50 ms", lambda r: r["steady"][k]["p50_ms"], ".1f")
        row("  p99 ms", lambda r: r["steady"][k]["p99_ms"], ".1f")
        row("  p99.9 ms", lambda r: r["steady"][k]["p999_ms"], ".1f")
        row("  max ms", lambda r: r["steady"][k]["max_ms"], ".1f")
        row("  kept up", lambda r: r["steady"][k]["sustained"], "")
        for stage, label in STAGE_LABELS:
            row(f"  {label} p50/p99 ms", lambda r, st=stage: _pair(r["steady"][k]["stages"][st]), "")
        row("  bench consumer CPU share", lambda r: r["steady"][k]["consumer_cpu_share"], ".0%")
        row("  CPU s / 100k events (reader)", lambda r: r["steady"][k]["cpu_s_per_100k"], ".2f")
    lines.append("cost")
    row("  peak RSS MB (reader process tree)", lambda r: r["peak_rss_mb"], ",.1f")
    row("  audit: lost", lambda r: r["audit"]["lost"])
    row("  audit: duplicates", lambda r: r["audit"]["duplicates"])
    row("  audit: order violations", lambda r: r["audit"]["order_violations"])
    row("load average, 1 min, reader start/end",
        lambda r: f"{r['loadavg_start'][0]:.1f}/{r['loadavg_end'][0]:.1f}", "")
    return "\n".join(lines)


# The warm-up: rounds of traffic until the broker's CPU per event stops falling and its JIT
# compiler threads are quiet.
WARMUP_PATHS = ("polling", "polling-eos")  # the idempotent producer, then transactions
WARMUP_ROUND_ROWS = 20_000  # backlog per path and round
WARMUP_ROUND_STEADY_S = 2.0  # seconds at 1,000/s per path and round
WARMUP_SMOOTH = 3  # rounds in the median that smooths the rounds' figures
WARMUP_SPAN = 3  # the smoothed figure compared with the one this many rounds before:
WARMUP_FALL = 0.10  # stopped falling when it is no more than this share lower
WARMUP_JIT_SHARE = 0.01  # and the JIT compiler threads' CPU at most this share of a round's
WARMUP_JIT_ROUNDS = 3  # wall time, in each of this many rounds in a row
WARMUP_MAX_ROUNDS = 60


def warmup_settled(figures: list[float], jit_shares: list[float]) -> bool:
    """The broker is warm when both hold:
    - its CPU per event has stopped falling: the median of the last WARMUP_SMOOTH rounds is
      no more than WARMUP_FALL below the same median WARMUP_SPAN rounds before (the median,
      so that one round taken by a collection or a neighbour's load neither stops the
      warm-up nor keeps it going);
    - its JIT compiler threads have gone quiet: at most WARMUP_JIT_SHARE of each of the last
      WARMUP_JIT_ROUNDS rounds' wall time. The CPU figure alone settles first, its noise
      hiding the tail of the compilation (the compiler threads still at 10-25% of a core):
      the first reader's p99 at 1,000/s was then 2-2.6x the second's, 1.3-1.8x after this."""
    n = len(figures)
    if n < max(WARMUP_SMOOTH + WARMUP_SPAN, WARMUP_JIT_ROUNDS):
        return False
    now = statistics.median(figures[n - WARMUP_SMOOTH:])
    before = statistics.median(figures[n - WARMUP_SMOOTH - WARMUP_SPAN:n - WARMUP_SPAN])
    return now >= (1 - WARMUP_FALL) * before and max(jit_shares[-WARMUP_JIT_ROUNDS:]) <= WARMUP_JIT_SHARE


def warm_up(pg, kafka, work, run_id, args, cancel: list) -> dict:
    """Traffic through the paths the readers use, its figures not reported, in rounds until the
    broker has settled (warmup_settled). The broker's JVM compiles its produce,
    fetch and transaction paths as they run: a reader measured before that carries the
    compilation (broker CPU per event 2.5-3x, p99 at 1,000/s 3-4x the later readers', in
    RESULTS.md after a fixed 23 s warm-up).

    A round, through each of WARMUP_PATHS in turn (one relay each, its own database and
    topic, the run's --relay-set): WARMUP_ROUND_ROWS rows committed while the relay is
    stopped and drained from its start (as drain(): producer start-up, large produce
    requests, the topic counter's offset requests, the marks), then WARMUP_ROUND_STEADY_S s
    at 1,000/s read by the bench's latency consumer (as steady(): small produce requests,
    short fetches), then the relay stopped. The round's figures: the broker's CPU seconds over
    the round per 100,000 events produced in it, and the CPU of its JIT compiler threads. It
    stops by itself when the first has stopped falling and the second has gone quiet
    (warmup_settled), or at its bounds: --warmup-max-s (a round is not started that would end
    after it, by the last round's length) and WARMUP_MAX_ROUNDS. Returns the rounds' figures
    and why it stopped."""
    out: dict = {"rounds": [], "settled": False}
    t0 = time.monotonic()
    readers = [RelayReader(m, pg, kafka, work, run_id, args.relay_set, name=f"warmup-{m}") for m in WARMUP_PATHS]
    counters = []
    try:
        for r in readers:
            r.setup(args.partitions)
            counters.append(load.TopicCounter(kafka.bootstrap, r.topic))
        figures: list[float] = []
        jit_shares: list[float] = []
        while True:
            t_round = time.monotonic()
            broker = procstat.CpuMeter(lambda: kafka.pid).start()
            jit = procstat.ThreadsCpuMeter(lambda: kafka.pid, procstat.JIT_THREADS).start()
            events = 0
            rnd: dict = {}
            for reader, counter in zip(readers, counters):
                base = counter.count()
                with reader.connect() as c:
                    load.fill(c, ROW_TOPIC, WARMUP_ROUND_ROWS, args.tx_rows, args.keys, args.payload)
                d = drain(reader, counter, base, WARMUP_ROUND_ROWS, pg, kafka, args.drain_timeout)
                if "error" in d:
                    raise BenchError(f"{reader.name}: {d['error']}")
                s = steady(reader, counter, pg, kafka, 1000, len(figures) + 1, WARMUP_ROUND_STEADY_S,
                           args.keys, args.payload, args.tail_timeout, cancel)
                reader.stop()
                events += WARMUP_ROUND_ROWS + s["written"]
                rnd[reader.name] = {"drain_kafka_cpu_s_per_100k": d["kafka_cpu_s_per_100k"],
                                    "p99_ms_at_1000": s["p99_ms"]}
            figure = broker.seconds() / events * 1e5
            jit_s = jit.seconds()
            figures.append(figure)
            seconds = time.monotonic() - t_round
            jit_shares.append(jit_s / seconds)
            out["rounds"].append({"kafka_cpu_s_per_100k": figure, "events": events, "seconds": seconds,
                                  "jit_cpu_s": jit_s, "paths": rnd})
            say(f"warm-up round {len(figures)}: broker {figure:.2f} CPU s / 100k events ({events:,} events, "
                f"{seconds:.1f} s), JIT compiler threads {jit_s:.2f} CPU s ({jit_shares[-1]:.0%}); " + ", ".join(
                    f"{n}: drain {v['drain_kafka_cpu_s_per_100k']:.2f}, p99 {v['p99_ms_at_1000']:.1f} ms"
                    for n, v in rnd.items()))
            if warmup_settled(figures, jit_shares):
                out["settled"], out["stopped_by"] = True, "settled"
                break
            if len(figures) >= WARMUP_MAX_ROUNDS:
                out["stopped_by"] = f"not settled, stopped at its bound of {WARMUP_MAX_ROUNDS} rounds"
                break
            if time.monotonic() - t0 + seconds > args.warmup_max_s:
                out["stopped_by"] = f"not settled, stopped at its bound of {args.warmup_max_s:g} s"
                break
    except Exception as e:  # noqa: BLE001 - a failed warm-up is said, the run goes on
        out["error"] = f"{type(e).__name__}: {e}"
        out["stopped_by"] = "failed"
        say(f"warm-up: FAILED: {e}")
    finally:
        for c in counters:
            c.close()
        for r in readers:
            r.cleanup()
    out["seconds"] = time.monotonic() - t0
    figs = ", ".join(f"{r['kafka_cpu_s_per_100k']:.2f}" for r in out["rounds"])
    say(f"warm-up took {out['seconds']:.0f} s: {len(out['rounds'])} rounds of {WARMUP_ROUND_ROWS:,} rows + "
        f"{WARMUP_ROUND_STEADY_S:g} s at 1,000/s through {' and '.join(WARMUP_PATHS)} (not reported), "
        f"{out['stopped_by']}; broker CPU s / 100k events by round: {figs}")
    return out


# ------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="catch-up backlog (default 1,000,000)")
    ap.add_argument("--payload", type=int, default=200, help="payload bytes (default 200)")
    ap.add_argument("--keys", type=int, default=10_000, help="distinct keys (default 10,000)")
    ap.add_argument("--tx-rows", type=int, default=1000, help="backlog rows per transaction (default 1000)")
    ap.add_argument("--rates", default="1000,5000,20000", help="steady rates, events/s (default 1000,5000,20000)")
    ap.add_argument("--duration", type=float, default=20, help="seconds per steady rate (default 20)")
    ap.add_argument("--readers", default="polling,replication,debezium,pgfloor",
                    help=f"some of {','.join(ALL_READERS)}, run in this order; one named twice runs "
                         "twice, the second shown as <reader>#2 (its own database and topic)")
    ap.add_argument("--partitions", type=int, default=6, help="partitions of each topic (default 6)")
    ap.add_argument("--json", dest="json_path", default="bench-results.json", help="results file")
    ap.add_argument("--relay-set", action="append", default=[], metavar="KEY=VALUE",
                    help="outbox-relay config override, e.g. source.polling.batch_size=5000 (repeatable)")
    ap.add_argument("--debezium-poll-ms", type=int, default=10,
                    help="Debezium poll.interval.ms (default 10; its own default, 500, adds latency)")
    ap.add_argument("--connect-heap", default="256m,2g", help="Connect JVM -Xms,-Xmx (connect-standalone.sh's)")
    ap.add_argument("--floor-batch", type=int, default=1000, help="pgfloor's batch (default 1000)")
    ap.add_argument("--drain-timeout", type=float, default=420, help="per reader (default 420 s)")
    ap.add_argument("--start-timeout", type=float, default=180, help="reader start-up (default 180 s)")
    ap.add_argument("--tail-timeout", type=float, default=30, help="wait after the writers (default 30 s)")
    ap.add_argument("--analyze", action="store_true",
                    help="ANALYZE outbox.events after the backlog is committed (by default the "
                         "drain starts before autovacuum has analyzed the table, as after a burst)")
    ap.add_argument("--perf", metavar="DIR",
                    help="profile our drains with perf record -g (outbox-relay + PostgreSQL processes, "
                         "first to last message); reports in DIR/<reader>-drain.txt")
    ap.add_argument("--baseline-bin", metavar="PATH",
                    help="a second outbox-relay binary (an earlier build) run side by side: readers "
                         "named <reader>-base (polling-base, replication-eos-base, ...) use it")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the warm-up (rounds of 20,000 rows and 2 s at 1,000/s through polling "
                         "and polling-eos, not reported, until the broker's CPU per event stops "
                         "falling and its JIT compiler is quiet) that compiles the broker's JVM paths "
                         "before the first measured reader")
    ap.add_argument("--warmup-max-s", type=float, default=420,
                    help="the warm-up's bound when the broker has not settled by then (default 420 s)")
    ap.add_argument("--servers", metavar="PGDIR,KAFKADIR",
                    help="use running harness servers in these directories instead of starting any")
    ap.add_argument("--pg-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the PostgreSQL the bench starts, as postgresql.conf takes it, "
                         "e.g. max_wal_size=4GB (repeatable; not with --servers); shown in the "
                         "results' header")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds-long run: --rows 2000 --rates 200 --duration 5 --readers polling,replication")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rows, args.rates, args.duration, args.readers = 2000, "200", 5, "polling,replication"
        args.drain_timeout, args.start_timeout, args.tail_timeout = 60, 60, 15
        args.warmup = False
    if args.perf:
        if not shutil.which("perf"):
            ap.error("--perf: perf is not installed (apt-get install linux-perf)")
        Path(args.perf).mkdir(parents=True, exist_ok=True)
    args.rates = [int(r) for r in str(args.rates).split(",") if r]
    args.readers = [r for r in args.readers.split(",") if r]
    bad = [r for r in args.readers if "#" in r or base_name(r) not in ALL_READERS
           or (r != base_name(r) and (base_name(r) not in BASE_READERS or not args.baseline_bin))]
    if bad:
        ap.error(f"--readers: unknown {bad}; known: {', '.join(ALL_READERS)}, and with --baseline-bin "
                 f"each of {', '.join(BASE_READERS)} with -base (name one twice to run it twice)")
    args.readers = number_repeats(args.readers)
    if args.baseline_bin and not os.access(args.baseline_bin, os.X_OK):
        ap.error(f"--baseline-bin: {args.baseline_bin} is not an executable")
    try:
        args.pg_settings = parse_pg_set(args.pg_set)
    except ValueError as e:
        ap.error(f"--pg-set: {e}")
    if args.pg_settings and args.servers:
        ap.error("--pg-set sets up the PostgreSQL the bench starts itself; the one of --servers runs "
                 "already with its settings. Leave out --servers, or start that server with them "
                 "(OUTBOX_PG_CONF='key = value;key2 = value2' integration/env/pg.sh start DIR, on a "
                 "new DIR)")
    if args.rows < 1 or any(r < 1 for r in args.rates) or args.duration <= 0:
        ap.error("--rows, --rates and --duration must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    binary = relay_binary()
    if any(kind(r) in RELAY_READERS for r in args.readers) and not os.access(binary, os.X_OK):
        print(f"bench: relay binary {binary} missing (build it or set OUTBOX_RELAY_BIN)", file=sys.stderr)
        return 2
    jar_dir = None
    if any(kind(r) == "debezium" for r in args.readers):
        r = subprocess.run([str(HERE / "fetch-debezium.sh")], stdout=subprocess.PIPE, text=True, timeout=900)
        if r.returncode != 0:
            print("bench: could not fetch the Debezium jars", file=sys.stderr)
            return 2
        jar_dir = Path(r.stdout.strip().splitlines()[-1])

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="outbox-bench."))
    os.chmod(work, 0o755)  # the postgres user must reach DIR/pg
    own_servers = args.servers is None
    if own_servers:
        pg, kafka = Postgres(work / "servers", conf=pg_conf(args.pg_settings)), Kafka(work / "servers")
    else:
        pgdir, kdir = args.servers.split(",")
        pg, kafka = Postgres(pgdir), Kafka(kdir)
    run_id = uuid.uuid4().hex[:6]
    cancel: list = []  # writer connections to cancel if interrupted
    results: dict = {}
    report = {"params": {k: v for k, v in vars(args).items() if k not in ("servers",)}, "readers": results}
    ok = True
    try:
        if own_servers:
            say("starting PostgreSQL 15 and Kafka")
            try:
                start_all([pg, kafka])
            except ServerError as e:
                ok = False
                hint = " (with --pg-set: its log names the setting it refused)" if args.pg_settings else ""
                print(f"bench: a server did not start{hint}:\n{e}", file=sys.stderr)
                return 2
        report["machine"] = machine_notes(pg, args.pg_settings)
        if args.baseline_bin:
            version = subprocess.run([args.baseline_bin, "--version"], capture_output=True, text=True)
            report["machine"]["baseline"] = f"{args.baseline_bin} ({version.stdout.strip() or 'no --version'})"
        say(f"postgres {pg.dsn_for('postgres')}{pg_settings_text(report['machine']['pg_settings'])}, "
            f"kafka {kafka.bootstrap}; work dir {work}")
        if args.warmup and any(base_name(r) in RELAY_READERS or kind(r) == "debezium" for r in args.readers):
            report["warmup"] = warm_up(pg, kafka, work, run_id, args, cancel)
        for name in args.readers:
            t = time.monotonic()
            what = kind(name)  # "polling#2" runs polling
            try:
                if what == "pgfloor":
                    results[name] = pg_floor(pg, work, run_id, args, name)
                    say(f"{name}: {results[name]['drain']['events_per_s']:,.0f} rows/s selected and marked")
                    continue
                if what == "debezium":
                    reader = DebeziumReader(pg, kafka, work, run_id, jar_dir, args.connect_heap,
                                            args.debezium_poll_ms, name=name)
                elif what == "polling-x2":  # two relays sharing the shards
                    reader = RelayPairReader(pg, kafka, work, run_id, args.relay_set, name=name)
                elif what != base_name(what):
                    reader = RelayReader(what, pg, kafka, work, run_id, args.relay_set,
                                         binary=args.baseline_bin, name=name)
                else:
                    reader = RelayReader(what, pg, kafka, work, run_id, args.relay_set, name=name)
                results[name] = {"loadavg_start": os.getloadavg()}
                run_reader(reader, pg, kafka, args, cancel, results[name])
            except Exception as e:  # noqa: BLE001 - one reader failing does not stop the others
                ok = False
                results.setdefault(name, {})["error"] = f"{type(e).__name__}: {e}"
                say(f"{name}: FAILED: {e}")
            finally:
                results.setdefault(name, {})["wall_s"] = time.monotonic() - t
                results[name]["loadavg_end"] = os.getloadavg()
        report["machine"]["loadavg_end"] = os.getloadavg()
        for name, r in results.items():
            if "error" in r or "error" in r.get("drain", {}):
                ok = False
            a = r.get("audit")
            if a is not None and (a.get("exit_code") != 0 or a.get("lost") != 0):
                ok = False
        text = table(results, args)
        m = report["machine"]
        loads = (f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in m['loadavg_start'])} at the "
                 f"start, {', '.join(f'{x:.2f}' for x in m['loadavg_end'])} at the end")
        w = report.get("warmup")
        notes = (f"{m['cpu']}, {m['cores']} cores, {m['memory']}, kernel {m['kernel']}; PostgreSQL "
                 f"{m['postgres']}{pg_settings_text(m['pg_settings'])}, Kafka {m['kafka']}; relay "
                 f"{m['relay_binary']} at {m['git']}; "
                 + (f"-base readers: {m['baseline']}; " if "baseline" in m else "")
                 + (f"warm-up {w['seconds']:.0f} s ({len(w['rounds'])} rounds, {w['stopped_by']}); "
                    if w else "no warm-up; ")
                 + f"{loads}.")
        print()
        print(text)
        print(notes)
        print()
        report["ok"] = ok
        Path(args.json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
        # The same table as RESULTS.md shows it: command, machine, load, figures.
        md = Path(args.json_path).with_suffix(".md")
        md.write_text(f"```sh\n{shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])}\n```\n\n"
                      f"{notes}\n\n```\n{text}\n```\n")
        say(f"results written to {args.json_path} and {md}; {'ok' if ok else 'FAILED'}")
        return 0 if ok else 1
    except KeyboardInterrupt as e:
        ok = False
        say(f"interrupted ({e}); stopping everything")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish the cleanup
        for c in list(cancel):
            try:
                c.cancel()
            except Exception:  # noqa: BLE001
                pass
        if own_servers:
            for s in (kafka, pg):
                try:
                    s.stop()
                except Exception as e:  # noqa: BLE001
                    print(f"stopping {type(s).__name__}: {e}", file=sys.stderr)
        if ok and not os.environ.get("OUTBOX_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench: logs and data kept in {work}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
