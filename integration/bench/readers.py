"""The readers the bench compares, each in its own database of the same PostgreSQL server,
publishing to its own topic of the same Kafka broker:

  polling, replication   outbox-relay (harness.Relay) in that source mode, defaults otherwise
  polling-eos, replication-eos
                         the same with delivery.guarantee: exactly_once (Kafka transactions)
  polling-x2             two outbox-relays in polling mode sharing source.polling.shards: 8
                         (docs/operations/sizing.md), run as one process tree (CPU and RSS of both)
  debezium               Kafka Connect standalone running Debezium's PostgreSQL connector
                         (pgoutput, own slot and publication) with its outbox EventRouter

Every reader maps the row topic T to the Kafka topic "bench.<reader>.T" (ours with
kafka.topic_map, Debezium with route.by.field=topic and route.topic.replacement).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Kafka, Postgres, Relay  # noqa: E402

import load  # noqa: E402

ROW_TOPIC = "events"
BENCH_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_dotted(d: dict, dotted: str, value) -> None:
    if dotted.startswith("kafka.properties."):  # librdkafka names have dots: linger.ms
        d.setdefault("kafka", {}).setdefault("properties", {})[dotted[len("kafka.properties."):]] = str(value)
        return
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


class Reader:
    name = ""
    ours = False

    def __init__(self, pg: Postgres, kafka: Kafka, work: Path, run_id: str):
        self.pg, self.kafka = pg, kafka
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = f"bench_{run_id}_{self.name.replace('-', '_')}"
        self.topic = f"bench.{run_id}.{self.name}.{ROW_TOPIC}"

    # -- lifecycle, in the order bench.py calls it
    def setup(self, partitions: int) -> None:
        self.pg.drop_database(self.db)
        self.dsn = self.pg.create_database(self.db)
        self._migrate()
        with self.connect() as c:
            load.install(c)
        self.kafka.create_topic(self.topic, partitions=partitions)

    def connect(self, autocommit: bool = True):
        return self.pg.connect(self.db, autocommit=autocommit)

    def _migrate(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> Optional[int]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise if the reader died."""

    def all_marked(self) -> bool:
        return True

    def metrics_text(self) -> Optional[str]:
        """The reader's Prometheus exposition, None when it has none."""
        return None

    def cleanup(self) -> None:
        """Stop, drop its slots and its database (the bench's topics go with the broker)."""
        try:
            self.stop()
        finally:
            try:
                with self.pg.connect("postgres", autocommit=True) as c:
                    c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE database = %s AND NOT active", (self.db,))
                self.pg.drop_database(self.db)
            except Exception as e:  # noqa: BLE001 - best effort; the servers go anyway
                print(f"  cleanup of {self.db}: {e}", file=sys.stderr)


class RelayReader(Reader):
    ours = True

    def __init__(self, mode: str, pg, kafka, work, run_id, overrides: list[str],
                 binary: Optional[str] = None, name: Optional[str] = None):
        self.name = name or mode
        super().__init__(pg, kafka, work, run_id)
        # "polling-eos": polling, exactly_once; "polling-eos-base": the same, run by `binary`
        self.mode, _, variant = mode.removesuffix("-base").partition("-")
        self.eos = variant == "eos"
        self.binary = binary
        self.checkpoint_topic = f"bench.{run_id}.{self.name}.checkpoints"
        self.overrides = overrides
        self.relay: Optional[Relay] = None

    def config(self, with_http: bool) -> dict:
        c = {
            "postgres": {"dsn": self.dsn},
            "kafka": {"bootstrap_servers": self.kafka.bootstrap,
                      "topic_map": {ROW_TOPIC: self.topic}},
            "source": {"mode": self.mode,
                       "replication": {"slot_name": f"{self.db}_slot",
                                       "publication_name": "bench_outbox"}},
            "log": {"level": "info"},
        }
        if self.eos:
            c["delivery"] = {"guarantee": "exactly_once", "checkpoint_topic": self.checkpoint_topic}
        if with_http:
            c["http"] = {"port": 0}  # never the default 8080 (several sessions share the host)
        for kv in self.overrides:
            k, _, v = kv.partition("=")
            _set_dotted(c, k, _parse_value(v))
        return c

    def _migrate(self) -> None:
        self.relay = Relay(self.config(with_http=True), self.work, binary=self.binary, name="relay")
        r = self.relay.command("migrate")
        if r.returncode != 0 and "http" in r.stderr + r.stdout and "unknown key" in r.stderr + r.stdout:
            # a relay without the HTTP endpoint (before it was merged)
            self.relay.set_config(self.config(with_http=False))
            r = self.relay.command("migrate")
        if r.returncode != 0:
            raise RuntimeError(f"outbox-relay migrate failed:\n{r.stdout}{r.stderr}")

    def start(self) -> None:
        self.relay.start()

    def stop(self) -> None:
        if self.relay is not None and self.relay.running:
            self.relay.terminate(60)

    @property
    def pid(self):
        return self.relay.pid if self.relay and self.relay.running else None

    def check(self) -> None:
        self.relay.assert_running(f"({self.name})")

    def all_marked(self) -> bool:
        with self.connect() as c:
            return c.execute("SELECT NOT EXISTS (SELECT 1 FROM outbox.events WHERE published_at IS NULL"
                             " AND dead_lettered_at IS NULL)").fetchone()[0]

    def metrics_text(self) -> Optional[str]:
        """GET /metrics of the running relay (its port from its log); None without one."""
        if self.pid is None:
            return None
        try:
            port = self.relay.http_port(timeout_s=5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except Exception:  # noqa: BLE001 - an older binary without /metrics: no breakdown
            return None

    def audit(self) -> dict:
        r = self.relay.command("audit", "--json", timeout_s=600)
        try:
            report = json.loads(r.stdout)
        except json.JSONDecodeError:
            report = {"error": (r.stdout + r.stderr)[-2000:]}
        report["exit_code"] = r.returncode
        return report


# Two relays as one process tree for the bench's CPU and RSS figures: `run` starts both with
# the same config and stops both on SIGTERM; any other command is the relay itself.
PAIR_SCRIPT = """#!/bin/sh
bin="$OUTBOX_PAIR_BIN"
[ "$1" = run ] || exec "$bin" "$@"
"$bin" "$@" & a=$!
"$bin" "$@" & b=$!
trap 'kill -TERM $a $b 2>/dev/null' TERM INT
while kill -0 $a 2>/dev/null || kill -0 $b 2>/dev/null; do wait; done
"""


class RelayPairReader(RelayReader):
    """polling-x2: two relays sharing `shards` shards (source.polling.shards)."""

    def __init__(self, pg, kafka, work, run_id, overrides: list[str], shards: int = 8):
        super().__init__("polling", pg, kafka, work, run_id, [f"source.polling.shards={shards}"] + overrides)
        self.name = "polling-x2"
        # the base class named its database, topic and work dir after the mode
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = f"bench_{run_id}_polling_x2"
        self.topic = f"bench.{run_id}.{self.name}.{ROW_TOPIC}"

    def _migrate(self) -> None:
        super()._migrate()
        script = self.work / "relay-pair.sh"
        script.write_text(PAIR_SCRIPT)
        script.chmod(0o755)
        self.relay = Relay(self.relay.config, self.work, binary=script, name="relay",
                           env={"OUTBOX_PAIR_BIN": str(self.relay.binary)})

    def stop(self) -> None:
        super().stop()
        # how the work was split: each relay's last line ("... N events published ...")
        if self.relay is not None:
            for line in self.relay.log_text().splitlines():
                if "outbox-relay stopped:" in line:
                    print(f"  {self.name}: {line.split('] ', 1)[-1]}", file=sys.stderr)


class DebeziumReader(Reader):
    """Kafka Connect 4.1 standalone (one JVM) with Debezium's PostgreSQL connector."""

    name = "debezium"

    def __init__(self, pg, kafka, work, run_id, jar_dir: Path, heap: str, poll_interval_ms: int):
        super().__init__(pg, kafka, work, run_id)
        self.jar_dir = jar_dir
        self.heap = heap
        self.poll_interval_ms = poll_interval_ms
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.work / "connect.log"
        self.out_path = self.work / "connect.out"
        self._last_rest = 0.0

    def _migrate(self) -> None:
        # The same outbox schema as ours, installed the same way.
        r = Relay({"postgres": {"dsn": self.dsn}, "kafka": {"bootstrap_servers": self.kafka.bootstrap}},
                  self.work, name="migrate").command("migrate")
        if r.returncode != 0:
            raise RuntimeError(f"outbox-relay migrate failed:\n{r.stdout}{r.stderr}")
        self.rest_port = free_port()
        self._write_config()

    def _write_config(self) -> None:
        prefix = self.topic[: -len(ROW_TOPIC)]
        worker = {
            "bootstrap.servers": self.kafka.bootstrap,
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
            "header.converter": "org.apache.kafka.connect.storage.SimpleHeaderConverter",
            "offset.storage.file.filename": str(self.work / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            "plugin.discovery": "only_scan",
            # the same producer guarantees as outbox-relay (which forces these), and the
            # Kafka 4 producer's default linger (Debezium at its defaults; outbox-relay's own
            # default is 1 ms); 5 requests in flight is what idempotence allows (Connect's
            # own default for source tasks is 1)
            "producer.enable.idempotence": "true",
            "producer.acks": "all",
            "producer.linger.ms": "5",
            "producer.max.in.flight.requests.per.connection": "5",
        }
        connector = {
            "name": "bench-outbox",
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "plugin.name": "pgoutput",
            "database.hostname": "127.0.0.1",
            "database.port": str(self.pg.port),
            "database.user": "postgres",
            "database.password": "unused-trust-auth",
            "database.dbname": self.db,
            "topic.prefix": "bench",
            "slot.name": f"{self.db}_dbz",
            "publication.name": "bench_dbz",
            "publication.autocreate.mode": "filtered",
            "table.include.list": "outbox.events",
            "snapshot.mode": "no_data",
            "binary.handling.mode": "bytes",
            "poll.interval.ms": str(self.poll_interval_ms),
            # no Debezium context headers (__debezium.context.*): the outbox headers only
            "extended.headers.enabled": "false",
            "transforms": "outbox",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.id": "event_id",
            "transforms.outbox.table.field.event.key": "key",
            "transforms.outbox.table.field.event.payload": "payload",
            "transforms.outbox.route.by.field": "topic",
            "transforms.outbox.route.topic.replacement": prefix + "${routedByValue}",
            # the row id as a header, as outbox-relay's outbox-id (Debezium puts the event
            # id in header "id")
            "transforms.outbox.table.fields.additional.placement": "id:header:outbox-id",
        }
        for path, props in ((self.work / "worker.properties", worker),
                            (self.work / "connector.properties", connector)):
            path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.work / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_path}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = FILE\n")

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("Connect already running")
        xms, xmx = self.heap.split(",")
        # The JVM options of Kafka's connect-standalone.sh / kafka-run-class.sh.
        cmd = ["java", f"-Xms{xms}", f"-Xmx{xmx}", "-server", "-XX:+UseG1GC",
               "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
               "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.work / 'log4j2.properties'}",
               "-cp", f"{self.jar_dir}/*", "org.apache.kafka.connect.cli.ConnectStandalone",
               str(self.work / "worker.properties"), str(self.work / "connector.properties")]
        with open(self.out_path, "a") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)  # graceful: the worker commits its offsets
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    @property
    def pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def log_tail(self, n: int = 30) -> str:
        lines = []
        for p in (self.out_path, self.log_path):
            try:
                lines += p.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(lines)

    def producer_settings(self) -> dict:
        """The task producer's acks, enable.idempotence and max.in.flight as Connect logged
        them ("ProducerConfig values:" of client connector-producer-*)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        found: dict = {}
        for block in text.split("ProducerConfig values:")[1:]:
            block = block.split("\n[", 1)[0]  # up to the next log line
            fields = dict(ln.strip().split(" = ", 1) for ln in block.splitlines() if " = " in ln)
            if fields.get("client.id", "").startswith("connector-producer-"):
                found = {k: fields.get(k) for k in
                         ("acks", "enable.idempotence", "max.in.flight.requests.per.connection", "linger.ms")}
        return found

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"Kafka Connect exited ({self.proc.returncode if self.proc else None}); "
                               f"log tail:\n{self.log_tail()}")
        if time.monotonic() - self._last_rest < 2:
            return
        self._last_rest = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}/connectors/bench-outbox/status",
                                        timeout=5) as r:
                status = json.loads(r.read())
        except OSError:
            return  # REST not up yet
        states = [status.get("connector", {}).get("state")] + [t.get("state") for t in status.get("tasks", [])]
        if "FAILED" in states:
            traces = [t.get("trace", "") for t in status.get("tasks", [])] + [status["connector"].get("trace", "")]
            raise RuntimeError("Debezium connector FAILED:\n" + "\n".join(t for t in traces if t)[:3000])
