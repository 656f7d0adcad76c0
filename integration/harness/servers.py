"""Throwaway PostgreSQL and Kafka servers, driven through integration/env/{pg,kafka}.sh.

The shell scripts are the single implementation (the demo and people use them
directly); these classes add the Python-side conveniences tests need.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

INTEGRATION_DIR = Path(__file__).resolve().parents[1]
ENV_DIR = INTEGRATION_DIR / "env"
REPO_DIR = INTEGRATION_DIR.parent


class ServerError(RuntimeError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the `export K='v'` lines written by env/common.sh:env_set."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = shlex.split(line)
        if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
            k, v = parts[1].split("=", 1)
            out[k] = v
    return out


def _pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


class _ScriptServer:
    script: str = ""
    timeout_s: float = 180.0

    def __init__(self, directory: os.PathLike | str):
        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)

    def _run(self, cmd: str, extra_env: Optional[dict[str, str]] = None) -> None:
        env = dict(os.environ)
        if extra_env:
            env.update(extra_env)
        r = subprocess.run(
            ["bash", str(ENV_DIR / self.script), cmd, str(self.dir)],
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            env=env,
        )
        if r.returncode != 0:
            raise ServerError(f"{self.script} {cmd} {self.dir} failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    @property
    def env(self) -> dict[str, str]:
        return read_env_file(self.dir / "env")

    def start(self):
        self._run("start")
        return self

    def restart(self):
        self._run("restart")
        return self

    def ensure_running(self):
        if not self.running:
            self.start()
        return self


class Postgres(_ScriptServer):
    """A PostgreSQL cluster in DIR/pg (see env/pg.sh): Debian 12's 15, or the server in
    `bindir` (default $OUTBOX_PG_BINDIR), e.g. PostgreSQL 16, 17 or 18 from env/pg-embedded.sh."""

    script = "pg.sh"

    def __init__(self, directory: os.PathLike | str, bindir: Optional[str] = None):
        super().__init__(directory)
        self.bindir = bindir or os.environ.get("OUTBOX_PG_BINDIR") or None

    def _run(self, cmd: str, extra_env: Optional[dict[str, str]] = None) -> None:
        env = {"OUTBOX_PG_BINDIR": self.bindir} if self.bindir else {}
        super()._run(cmd, {**env, **(extra_env or {})})

    def stop(self, mode: str = "fast") -> None:
        """mode: fast (SIGINT), immediate (SIGQUIT: crash-like, recovery on next start) or smart."""
        self._run("stop", {"PG_STOP_MODE": mode})

    @property
    def pid(self) -> Optional[int]:
        f = self.dir / "pg" / "data" / "postmaster.pid"
        try:
            return int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        return _pid_alive(self.pid)

    @property
    def port(self) -> int:
        return int((self.dir / "pg.port").read_text().strip())

    @property
    def dsn(self) -> str:
        return self.dsn_for("outbox")

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres"

    def connect(self, dbname: str = "outbox", autocommit: bool = False, **kw):
        import psycopg

        return psycopg.connect(self.dsn_for(dbname), autocommit=autocommit, connect_timeout=10, **kw)

    def create_database(self, name: str, template: str = "template0") -> str:
        with self.connect("postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        with self.connect("postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_text(self) -> str:
        try:
            return (self.dir / "pg" / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""


@dataclasses.dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: Optional[str]
    value: Optional[bytes]
    headers: dict  # str -> str (last value wins if a name repeats)
    header_list: tuple = ()  # ((name, str value), ...) as received
    timestamp_ms: Optional[int] = None  # CreateTime: when the relay's producer took it

    @property
    def event_id(self) -> Optional[str]:
        return self.headers.get("outbox-event-id")

    @property
    def outbox_id(self) -> Optional[int]:
        v = self.headers.get("outbox-id")
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None


def _to_record(m) -> Record:
    hl = tuple(
        (k, v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v) for k, v in (m.headers() or [])
    )
    key = m.key()
    return Record(
        topic=m.topic(),
        partition=m.partition(),
        offset=m.offset(),
        key=key.decode("utf-8", "replace") if key is not None else None,
        value=m.value(),
        headers=dict(hl),
        header_list=hl,
        timestamp_ms=m.timestamp()[1] if m.timestamp()[0] else None,
    )


class KafkaReader:
    """Reads topics from the beginning (assign(), no group offsets) and accumulates
    every record, so tests can wait for conditions and see duplicates."""

    def __init__(self, bootstrap: str, topics: Sequence[str] | str, metadata_timeout_s: float = 30.0):
        from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.records: list[Record] = []
        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"it-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
                "log_level": 3,
            }
        )
        deadline = time.monotonic() + metadata_timeout_s
        parts = []
        for t in self.topics:
            while True:
                md = self._c.list_topics(t, timeout=5)
                tm = md.topics.get(t)
                if tm is not None and tm.error is None and tm.partitions:
                    parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in sorted(tm.partitions)]
                    break
                if time.monotonic() > deadline:
                    self._c.close()
                    raise ServerError(f"topic {t} not found in Kafka metadata: {tm.error if tm else 'absent'}")
                time.sleep(0.2)
        self._c.assign(parts)

    def poll(self, timeout_s: float = 0.5) -> list[Record]:
        """One fetch round: records that arrived (possibly none)."""
        from confluent_kafka import KafkaError

        new = []
        for m in self._c.consume(num_messages=5000, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.retriable() or not err.fatal():
                    continue  # e.g. transport errors while a broker restarts
                raise ServerError(f"consumer error: {err}")
            new.append(_to_record(m))
        self.records.extend(new)
        return new

    def wait_for(self, predicate: Callable[[list[Record]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.records):
            if time.monotonic() > deadline:
                return False
            self.poll(min(0.5, max(0.05, deadline - time.monotonic())))
        return True

    def read(self, expected_count: int, timeout_s: float, idle_s: float = 1.5) -> list[Record]:
        """Until at least expected_count records AND a further idle_s poll brings
        nothing more (so duplicates show), or timeout_s. Returns all records."""
        deadline = time.monotonic() + timeout_s
        while len(self.records) < expected_count and time.monotonic() < deadline:
            self.poll(min(0.5, max(0.05, deadline - time.monotonic())))
        while time.monotonic() < deadline:
            quiet_until = time.monotonic() + idle_s
            got = 0
            while time.monotonic() < quiet_until:
                got += len(self.poll(max(0.05, quiet_until - time.monotonic())))
            if got == 0:
                break
        return self.records

    def close(self) -> None:
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class Kafka(_ScriptServer):
    """A single-node KRaft Kafka in DIR/kafka (see env/kafka.sh)."""

    script = "kafka.sh"

    def stop(self, mode: str = "term") -> None:
        """mode: term (controlled shutdown) or kill (SIGKILL)."""
        self._run("stop", {"KAFKA_STOP_MODE": mode})

    @property
    def pid(self) -> Optional[int]:
        try:
            return int((self.dir / "kafka" / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        return _pid_alive(self.pid)

    @property
    def port(self) -> int:
        return int((self.dir / "kafka" / "ports").read_text().split()[0])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})

    def create_topic(self, name: str, partitions: int = 6, timeout_s: float = 30.0,
                     config: dict | None = None) -> str:
        from confluent_kafka.admin import NewTopic

        a = self.admin()  # keep the handle alive until the future resolves
        fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                       config=config or {})])
        fs[name].result(timeout=timeout_s)
        # wait until the metadata shows the leaders, so producers don't race creation
        deadline = time.monotonic() + timeout_s
        while True:
            tm = a.list_topics(name, timeout=5).topics.get(name)
            if tm and tm.error is None and len(tm.partitions) == partitions and all(
                p.leader >= 0 for p in tm.partitions.values()
            ):
                return name
            if time.monotonic() > deadline:
                raise ServerError(f"topic {name} not ready after {timeout_s}s")
            time.sleep(0.1)

    def reader(self, topics: Sequence[str] | str) -> KafkaReader:
        return KafkaReader(self.bootstrap, topics)

    def consume_all(
        self, topics: Sequence[str] | str, expected_count: int, timeout_s: float = 60.0, idle_s: float = 1.5
    ) -> list[Record]:
        """All records of the topics from the beginning: stops when expected_count
        is reached and one more idle_s poll shows nothing more, or on timeout."""
        with self.reader(topics) as r:
            return list(r.read(expected_count, timeout_s, idle_s))

    def log_text(self) -> str:
        try:
            return (self.dir / "kafka" / "kafka.log").read_text(errors="replace")
        except OSError:
            return ""


def start_all(servers: Iterable[_ScriptServer]) -> None:
    """Start several servers concurrently (PG ~1 s, Kafka ~4 s)."""
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor() as ex:
        for f in [ex.submit(s.start) for s in servers]:
            f.result()
