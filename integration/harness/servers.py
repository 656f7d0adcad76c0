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

    def __init__(self, directory: os.PathLike | str, bindir: Optional[str] = None, conf: Optional[str] = None):
        """conf: OUTBOX_PG_CONF for pg.sh ("k = v;k2 = v2", settings added at initdb)."""
        super().__init__(directory)
        self.bindir = bindir or os.environ.get("OUTBOX_PG_BINDIR") or None
        self.conf = conf

    def _run(self, cmd: str, extra_env: Optional[dict[str, str]] = None) -> None:
        env = {"OUTBOX_PG_BINDIR": self.bindir} if self.bindir else {}
        if self.conf is not None:
            env["OUTBOX_PG_CONF"] = self.conf
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


class PgBouncer:
    """Debian's pgbouncer in front of a `Postgres`, in one pool mode, on a free 127.0.0.1 port.

    Every database is forwarded to the server (`* = host=127.0.0.1 port=PGPORT`); auth is
    `trust` with an auth_file naming `users` (the server trusts loopback too); no Unix socket.
    `ignore_startup_parameters = extra_float_digits, options` as most deployments have it (the
    relay sends `options`), unless `ignore_options` is false. Started in the foreground by the
    harness (as user postgres when run as root: pgbouncer refuses root), stopped by its pid;
    its log (stderr) is DIR/pgbouncer.log. DIR must be reachable by user postgres (the
    session's it_root is)."""

    def __init__(self, directory: os.PathLike | str, pg: Postgres, pool_mode: str,
                 users: Sequence[str] = ("postgres",), ignore_options: bool = True,
                 binary: str = "/usr/sbin/pgbouncer"):
        if pool_mode not in ("session", "transaction", "statement"):
            raise ValueError(f"unknown pool_mode {pool_mode!r}")
        self.dir = Path(directory).resolve()
        self.pg = pg
        self.pool_mode = pool_mode
        self.users = list(users)
        self.ignore_options = ignore_options
        self.binary = binary
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def _write_config(self, port: int) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        auth = self.dir / "userlist.txt"
        auth.write_text("".join(f'"{u}" ""\n' for u in self.users))
        ini = self.dir / "pgbouncer.ini"
        ignore = "extra_float_digits, options" if self.ignore_options else "extra_float_digits"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.pg.port}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"ignore_startup_parameters = {ignore}\n"
            "max_client_conn = 200\n"
            "default_pool_size = 20\n"
        )
        for f in (auth, ini):
            f.chmod(0o644)
        return ini

    @staticmethod
    def _free_port() -> int:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def _accepting(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, timeout_s: float = 30.0) -> "PgBouncer":
        """Starts it; a port taken between picking and binding is picked again."""
        if not Path(self.binary).exists():
            raise ServerError(f"{self.binary} missing: install Debian's pgbouncer (integration/env/install-deps.sh)")
        for _ in range(5):
            self.port = self._free_port()
            ini = self._write_config(self.port)
            cmd = [self.binary]
            if os.geteuid() == 0:
                cmd += ["-u", "postgres"]
            cmd.append(str(ini))
            with open(self.log_path, "a") as log:
                log.write(f"===== [harness] {' '.join(cmd)}\n")
                log.flush()
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            deadline = time.monotonic() + timeout_s
            while self.proc.poll() is None and not self._accepting():
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"pgbouncer did not listen on {self.port} within {timeout_s}s:\n{self.log_text()}")
                time.sleep(0.05)
            if self.proc.poll() is None:
                return self
            if "Address already in use" not in self.log_text():
                raise ServerError(f"pgbouncer exited ({self.proc.returncode}):\n{self.log_text()}")
        raise ServerError(f"pgbouncer found no free port:\n{self.log_text()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (immediate shutdown: its client connections close), then SIGKILL if needed."""
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dsn_for(self, dbname: str, user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname: str, autocommit: bool = True, **kw):
        """psycopg through the pool; no prepared statements (a transaction pool hands each
        transaction to any server session, where a statement prepared in another is unknown)."""
        import psycopg

        return psycopg.connect(self.dsn_for(dbname), autocommit=autocommit, connect_timeout=10,
                               prepare_threshold=None, **kw)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
