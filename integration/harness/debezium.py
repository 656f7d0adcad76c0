"""Debezium on the real servers: Kafka Connect 4.x standalone (one JVM) running Debezium's
PostgreSQL connector (pgoutput, its own slot and publication) with its outbox EventRouter.

Used by the bench (integration/bench/readers.py, DebeziumReader) and by the cut-over test
(integration/tests/test_cutover.py). The jars come from Maven Central through
integration/bench/fetch-debezium.sh, which integration/env/install-deps.sh runs, into the
project's cache; jar_dir() runs it again (a no-op once they are there).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

FETCH_SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "fetch-debezium.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jar_dir(timeout_s: float = 900) -> Path:
    """The directory of Connect's and Debezium's jars, fetched first if missing."""
    r = subprocess.run([str(FETCH_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"{FETCH_SCRIPT} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def worker_properties(bootstrap: str, work: Path, rest_port: int, offset_flush_interval_ms: int = 1000) -> dict:
    """A standalone worker: offsets in a file of `work`, REST on 127.0.0.1:rest_port, the
    producer with the guarantees outbox-relay forces (idempotence, acks=all)."""
    return {
        "bootstrap.servers": bootstrap,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        "header.converter": "org.apache.kafka.connect.storage.SimpleHeaderConverter",
        "offset.storage.file.filename": str(work / "connect.offsets"),
        # how often the worker commits its offsets; Debezium confirms the slot's position
        # from committed offsets only, so this bounds what a stop leaves unconfirmed
        "offset.flush.interval.ms": str(offset_flush_interval_ms),
        "listeners": f"http://127.0.0.1:{rest_port}",
        "plugin.discovery": "only_scan",
        # the Kafka 4 producer's default linger; 5 requests in flight is what idempotence
        # allows (Connect's own default for source tasks is 1)
        "producer.enable.idempotence": "true",
        "producer.acks": "all",
        "producer.linger.ms": "5",
        "producer.max.in.flight.requests.per.connection": "5",
    }


def outbox_connector(name: str, pg_port: int, db: str, slot: str, publication: str, table: str,
                     topic_replacement: str, poll_interval_ms: int = 500, *, event_id: str = "event_id",
                     key: str = "key", payload: str = "payload", route_by: str = "topic",
                     row_id_header: Optional[str] = "id:header:outbox-id") -> dict:
    """Debezium's PostgreSQL connector on `table` with the outbox EventRouter: the message key
    from column `key`, the value the bytes of `payload`, the event id in header "id", the
    topic `topic_replacement` with ${routedByValue} the value of column `route_by`. By
    default the row's id also goes in header outbox-id (as outbox-relay sends it), so that
    `outbox-relay audit` matches Debezium's messages to the rows of outbox.events; None
    leaves it out (a table without such an id)."""
    c = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": "127.0.0.1",
        "database.port": str(pg_port),
        "database.user": "postgres",
        "database.password": "unused-trust-auth",
        "database.dbname": db,
        "topic.prefix": "dbz",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "filtered",
        "table.include.list": table,
        "snapshot.mode": "no_data",
        "binary.handling.mode": "bytes",
        "poll.interval.ms": str(poll_interval_ms),
        # no Debezium context headers (__debezium.context.*): the outbox headers only
        "extended.headers.enabled": "false",
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": event_id,
        "transforms.outbox.table.field.event.key": key,
        "transforms.outbox.table.field.event.payload": payload,
        "transforms.outbox.route.by.field": route_by,
        "transforms.outbox.route.topic.replacement": topic_replacement,
    }
    if row_id_header:
        c["transforms.outbox.table.fields.additional.placement"] = row_id_header
    return c


class KafkaConnect:
    """One Kafka Connect standalone worker process running one connector. start() launches
    it, stop() ends it gracefully (SIGTERM: the worker commits its offsets), kill() with
    SIGKILL. Owned by the thread that made it."""

    def __init__(self, work: Path, worker: dict, connector: dict, jars: Path, heap: str = "256m,1g"):
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.worker, self.connector = worker, connector
        self.jars = jars
        self.heap = heap
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = work / "connect.log"
        self.out_path = work / "connect.out"
        self.rest_url = worker["listeners"]
        self._last_rest = 0.0
        for path, props in ((work / "worker.properties", worker), (work / "connector.properties", connector)):
            path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (work / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_path}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = FILE\n")

    def start(self) -> "KafkaConnect":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("Connect already running")
        xms, xmx = self.heap.split(",")
        # The JVM options of Kafka's connect-standalone.sh / kafka-run-class.sh.
        cmd = ["java", f"-Xms{xms}", f"-Xmx{xmx}", "-server", "-XX:+UseG1GC",
               "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
               "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.work / 'log4j2.properties'}",
               "-cp", f"{self.jars}/*", "org.apache.kafka.connect.cli.ConnectStandalone",
               str(self.work / "worker.properties"), str(self.work / "connector.properties")]
        with open(self.out_path, "a") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def stop(self, timeout_s: float = 60) -> None:
        """Graceful: SIGTERM, the worker stops the task and commits its offsets."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    @property
    def pid(self) -> Optional[int]:
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

    def task_state(self) -> Optional[str]:
        """The task's state from the REST API (RUNNING, FAILED, ...); None until it answers."""
        try:
            with urllib.request.urlopen(f"{self.rest_url}/connectors/{self.connector['name']}/status",
                                        timeout=5) as r:
                status = json.loads(r.read())
        except OSError:
            return None
        states = [status.get("connector", {}).get("state")] + [t.get("state") for t in status.get("tasks", [])]
        if "FAILED" in states:
            traces = [t.get("trace", "") for t in status.get("tasks", [])] + [status["connector"].get("trace", "")]
            raise RuntimeError("Debezium connector FAILED:\n" + "\n".join(t for t in traces if t)[:3000])
        tasks = status.get("tasks", [])
        return tasks[0].get("state") if tasks else None

    def check(self) -> None:
        """Raise if the worker died or the connector failed (REST asked at most every 2 s)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"Kafka Connect exited ({self.proc.returncode if self.proc else None}); "
                               f"log tail:\n{self.log_tail()}")
        if time.monotonic() - self._last_rest < 2:
            return
        self._last_rest = time.monotonic()
        self.task_state()
