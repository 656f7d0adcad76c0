"""The readers the bench compares, each in its own database of the same PostgreSQL server,
publishing to its own topic of the same Kafka broker:

  polling, replication   outbox-relay (harness.Relay) in that source mode, defaults otherwise
  polling-eos, replication-eos
                         the same with delivery.guarantee: exactly_once (Kafka transactions)
  polling-x2             two outbox-relays in polling mode sharing source.polling.shards: 8
                         (docs/operations/sizing.md), run as one process tree (CPU and RSS of both)
  debezium               Kafka Connect standalone running Debezium's PostgreSQL connector
                         (pgoutput, own slot and publication) with its outbox EventRouter

Every reader maps the row topic T to the Kafka topic "bench.<run>.<reader>.T" (ours with
kafka.topic_map, Debezium with route.by.field=topic and route.topic.replacement). A reader
named twice in one run is a second instance, "polling#2": its database, topic and work
directory are named after "polling-2" (a topic name has no '#').
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Kafka, Postgres, Relay, debezium  # noqa: E402
from harness.debezium import free_port  # noqa: E402

import load  # noqa: E402

ROW_TOPIC = "events"
BENCH_DIR = Path(__file__).resolve().parent


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

    def __init__(self, pg: Postgres, kafka: Kafka, work: Path, run_id: str, name: Optional[str] = None):
        self.pg, self.kafka = pg, kafka
        if name:
            self.name = name
        self.work = work / self.slug
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = f"bench_{run_id}_{self.slug.replace('-', '_')}"
        self.topic = f"bench.{run_id}.{self.slug}.{ROW_TOPIC}"

    @property
    def slug(self) -> str:
        """The name as a database, topic and directory take it: "polling#2" -> "polling-2"."""
        return self.name.replace("#", "-")

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
        super().__init__(pg, kafka, work, run_id, name or mode)
        # "polling-eos": polling, exactly_once; "polling-eos-base": the same, run by `binary`
        self.mode, _, variant = mode.removesuffix("-base").partition("-")
        self.eos = variant == "eos"
        self.binary = binary
        self.checkpoint_topic = f"bench.{run_id}.{self.slug}.checkpoints"
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

    def __init__(self, pg, kafka, work, run_id, overrides: list[str], shards: int = 8,
                 name: str = "polling-x2"):
        super().__init__("polling", pg, kafka, work, run_id, [f"source.polling.shards={shards}"] + overrides,
                         name=name)

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
    """Kafka Connect 4.1 standalone (one JVM) with Debezium's PostgreSQL connector
    (harness/debezium.py)."""

    name = "debezium"

    def __init__(self, pg, kafka, work, run_id, jar_dir: Path, heap: str, poll_interval_ms: int,
                 name: Optional[str] = None):
        super().__init__(pg, kafka, work, run_id, name)
        self.jar_dir = jar_dir
        self.heap = heap
        self.poll_interval_ms = poll_interval_ms
        self.connect_proc: Optional[debezium.KafkaConnect] = None

    def _migrate(self) -> None:
        # The same outbox schema as ours, installed the same way.
        r = Relay({"postgres": {"dsn": self.dsn}, "kafka": {"bootstrap_servers": self.kafka.bootstrap}},
                  self.work, name="migrate").command("migrate")
        if r.returncode != 0:
            raise RuntimeError(f"outbox-relay migrate failed:\n{r.stdout}{r.stderr}")
        self.rest_port = free_port()
        prefix = self.topic[: -len(ROW_TOPIC)]
        worker = debezium.worker_properties(self.kafka.bootstrap, self.work, self.rest_port)
        # the row id as a header, as outbox-relay's outbox-id (Debezium puts the event id in
        # header "id")
        connector = debezium.outbox_connector("bench-outbox", self.pg.port, self.db, f"{self.db}_dbz",
                                              "bench_dbz", "outbox.events", prefix + "${routedByValue}",
                                              self.poll_interval_ms)
        self.connect_proc = debezium.KafkaConnect(self.work, worker, connector, self.jar_dir, self.heap)

    def start(self) -> None:
        self.connect_proc.start()

    def stop(self) -> None:
        if self.connect_proc is not None:
            self.connect_proc.stop()

    @property
    def pid(self):
        return self.connect_proc.pid if self.connect_proc else None

    def log_tail(self, n: int = 30) -> str:
        return self.connect_proc.log_tail(n) if self.connect_proc else ""

    def producer_settings(self) -> dict:
        return self.connect_proc.producer_settings() if self.connect_proc else {}

    def check(self) -> None:
        if self.connect_proc is None:
            raise RuntimeError("Kafka Connect not set up")
        self.connect_proc.check()
