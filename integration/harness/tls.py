"""TLS and authentication test servers, with certificates made by the test.

- Certs: a CA, a server certificate for localhost/127.0.0.1, one for a wrong host (both
  signed by the CA) and an unrelated CA the servers' certificates do not chain to (openssl).
- TlsPostgres: a PostgreSQL 15 (env/pg.sh) with ssl=on and a pg_hba.conf that lets every
  role but postgres in only over TLS and only with a SCRAM password.
- TlsKafka: a single-node Kafka 4 broker of its own (not the shared one: its listeners
  differ), PEM keystores, listeners
      PLAINTEXT  the harness's own (topics, reading back); the relay never uses it
      SSL        server certificate for localhost/127.0.0.1
      SASL_SSL   SCRAM-SHA-512, same certificate
      WRONGHOST  SSL with the wrong-host certificate (same CA)
  SCRAM users are added at run time with add_scram_user().
Both are stopped by pid (env/pg.sh and env/kafka.sh stop).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from .servers import ENV_DIR, Kafka, Postgres, ServerError
from .wait import wait_until

SCRAM = "SCRAM-SHA-512"


# ------------------------------------------------------------------ certificates
class Certs:
    """PEM files in `directory`: ca.pem, server.{pem,key}, wrong.{pem,key}, other-ca.pem."""

    SERVER_NAMES = "DNS:localhost,IP:127.0.0.1"
    WRONG_NAMES = "DNS:wrong-host.invalid"

    def __init__(self, directory: os.PathLike | str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.other_ca = self.dir / "other-ca.pem"
        self.server_cert, self.server_key = self.dir / "server.pem", self.dir / "server.key"
        self.wrong_cert, self.wrong_key = self.dir / "wrong.pem", self.dir / "wrong.key"
        self._make_ca("ca", "outbox-it test CA")
        self._make_ca("other-ca", "outbox-it untrusted CA")
        self._make_leaf("server", "localhost", self.SERVER_NAMES)
        self._make_leaf("wrong", "wrong-host.invalid", self.WRONG_NAMES)

    def _openssl(self, *args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise ServerError(f"openssl {' '.join(args)} failed:\n{r.stderr}")

    def _make_ca(self, name: str, cn: str) -> None:
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "3", "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def _make_leaf(self, name: str, cn: str, names: str) -> None:
        self._openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        )  # fmt: skip
        (self.dir / f"{name}.ext").write_text(
            f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "3", "-extfile", f"{name}.ext",
        )  # fmt: skip

    def keystore(self, name: str) -> Path:
        """Key then certificate in one PEM file (Kafka's ssl.keystore.type=PEM)."""
        out = self.dir / f"{name}-keystore.pem"
        out.write_text((self.dir / f"{name}.key").read_text() + (self.dir / f"{name}.pem").read_text())
        return out


# -------------------------------------------------------------------- PostgreSQL
class TlsPostgres(Postgres):
    """env/pg.sh's server with ssl=on and SCRAM-over-TLS for every role but postgres."""

    def __init__(self, directory: os.PathLike | str, certs: Certs):
        super().__init__(directory)
        self.certs = certs

    def start(self):
        super().start()
        data = self.dir / "pg" / "data"
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        for src, dst, mode in ((self.certs.server_cert, "server.crt", 0o644), (self.certs.server_key, "server.key", 0o600)):
            shutil.copyfile(src, data / dst)
            os.chmod(data / dst, mode)
            if owner:
                os.chown(data / dst, owner.pw_uid, owner.pw_gid)
        conf = data / "postgresql.conf"
        text = conf.read_text()
        if "# --- outbox-relay TLS ---" not in text:
            conf.write_text(
                text + "\n# --- outbox-relay TLS ---\nssl = on\nssl_cert_file = 'server.crt'\n"
                "ssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'\n"
            )
        # postgres (the harness's admin) keeps trust; every other role: TLS and SCRAM only.
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
            "hostnossl replication all 127.0.0.1/32 reject\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostssl replication all 127.0.0.1/32 scram-sha-256\n"
        )
        self._run("restart")
        return self

    def tls_dsn(self, dbname: str, user: str, host: str = "localhost", rootcert: Path | None = None,
                sslmode: str = "verify-full", extra: str = "") -> str:
        dsn = (f"host={host} port={self.port} dbname={dbname} user={user} sslmode={sslmode} "
               f"sslrootcert={rootcert or self.certs.ca}")
        return f"{dsn} {extra}".strip()

    def create_login(self, name: str, password: str, *, member_of: str = "outbox_relay",
                     replication: bool = False) -> None:
        """A login role with a SCRAM password (re-created if it exists)."""
        from psycopg import sql

        with self.connect("postgres", autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            c.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(name), sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
                    sql.Literal(password))
            )
            if member_of:
                c.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(name)))


# ------------------------------------------------------------------------- Kafka
def _kafka_jar_dir() -> Path:
    version = re.search(r"<kafka.version>(.*?)</kafka.version>", (ENV_DIR / "kafka-pom.xml").read_text()).group(1)
    cache = Path(os.environ.get("OUTBOX_RELAY_CACHE") or Path.home() / ".cache" / "outbox-relay")
    return cache / f"kafka-{version}"


def _free_ports(n: int) -> list[int]:
    import socket

    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class TlsKafka(Kafka):
    """A broker with PLAINTEXT (harness), SSL, SASL_SSL (SCRAM-SHA-512) and WRONGHOST listeners.

    `port`/`bootstrap`/`admin()`/`create_topic()`/`consume_all()` (from Kafka) use the
    PLAINTEXT listener; ssl_bootstrap, sasl_bootstrap and wrong_host_bootstrap the others."""

    LISTENERS = ("PLAINTEXT", "SSL", "SASL_SSL", "WRONGHOST")

    def __init__(self, directory: os.PathLike | str, certs: Certs):
        super().__init__(directory)
        self.certs = certs
        self.kd = self.dir / "kafka"

    @property
    def ports(self) -> dict[str, int]:
        return json.loads((self.kd / "tls-ports.json").read_text())

    def _bootstrap(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def ssl_bootstrap(self) -> str:
        return self._bootstrap("SSL")

    @property
    def sasl_bootstrap(self) -> str:
        return self._bootstrap("SASL_SSL")

    @property
    def wrong_host_bootstrap(self) -> str:
        return self._bootstrap("WRONGHOST")

    def _write_config(self) -> Path:
        self.kd.mkdir(parents=True, exist_ok=True)
        ports = dict(zip(self.LISTENERS + ("CONTROLLER",), _free_ports(len(self.LISTENERS) + 1)))
        (self.kd / "tls-ports.json").write_text(json.dumps(ports))
        (self.kd / "ports").write_text(f"{ports['PLAINTEXT']} {ports['CONTROLLER']}\n")  # for Kafka.port
        listeners = ",".join(f"{n}://127.0.0.1:{ports[n]}" for n in self.LISTENERS)
        props = self.kd / "server.properties"
        props.write_text(
            f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{ports['CONTROLLER']}
listeners={listeners},CONTROLLER://127.0.0.1:{ports['CONTROLLER']}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,WRONGHOST:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
ssl.keystore.type=PEM
ssl.keystore.location={self.certs.keystore('server')}
listener.name.wronghost.ssl.keystore.type=PEM
listener.name.wronghost.ssl.keystore.location={self.certs.keystore('wrong')}
sasl.enabled.mechanisms={SCRAM}
listener.name.sasl_ssl.sasl.enabled.mechanisms={SCRAM}
listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs={self.kd}/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
num.partitions=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""
        )
        (self.kd / "log4j2.properties").write_text(
            f"status = warn\nappender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {self.kd}/kafka.log\nappender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
        )
        return props

    def _java(self) -> list[str]:
        return ["java", f"-Dlog4j2.configurationFile={self.kd}/log4j2.properties", "-cp", f"{_kafka_jar_dir()}/*"]

    def start(self):
        if self.running:
            return self
        if not (_kafka_jar_dir() / ".complete").exists():
            raise ServerError(f"Kafka jars missing in {_kafka_jar_dir()}: run integration/env/install-deps.sh")
        if not (self.kd / "data" / "meta.properties").exists():
            shutil.rmtree(self.kd, ignore_errors=True)
            props = self._write_config()
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode().replace("-", "A")
            r = subprocess.run(self._java() + ["kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise ServerError(f"kafka storage format failed:\n{r.stdout}{r.stderr}")
        with open(self.kd / "kafka.out", "a") as out:
            p = subprocess.Popen(
                ["java", "-Xms128m", "-Xmx384m", "-XX:+UseG1GC", "-Djava.awt.headless=true"] + self._java()[1:]
                + ["kafka.Kafka", str(self.kd / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        (self.kd / "kafka.pid").write_text(f"{p.pid}\n")
        self._proc = p  # reaped on stop

        def ready():
            if p.poll() is not None:
                raise ServerError(f"TLS Kafka exited during start-up ({p.returncode}):\n{self.log_text()[-3000:]}")
            from confluent_kafka.admin import AdminClient

            try:
                md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
                return len(md.brokers) == 1
            except Exception:  # noqa: BLE001
                return False

        wait_until(ready, 120, 0.2, "the TLS Kafka broker to answer on its PLAINTEXT listener")
        return self

    def stop(self, mode: str = "term") -> None:
        super().stop(mode)
        proc = getattr(self, "_proc", None)
        if proc is not None:
            proc.wait(timeout=10)

    def add_scram_user(self, user: str, password: str) -> None:
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        a = self.admin()
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        fs = a.alter_user_scram_credentials([UserScramCredentialUpsertion(user, info, password.encode())])
        for f in fs.values():
            f.result(timeout=30)

        # Credentials reach the SASL listener through the metadata log: wait until a login works.
        def can_login():
            from confluent_kafka.admin import AdminClient

            c = AdminClient(self.client_properties("SASL_SSL", user, password) | {"log_level": 0})
            try:
                c.list_topics(timeout=3)
                return True
            except Exception:  # noqa: BLE001
                return False

        wait_until(can_login, 30, 0.2, f"SCRAM user {user} able to log in")

    def client_properties(self, listener: str, user: str | None = None, password: str | None = None,
                          ca: Path | None = None) -> dict[str, str]:
        """librdkafka properties (bootstrap included) for one of the TLS listeners."""
        props = {
            "bootstrap.servers": self._bootstrap(listener),
            "security.protocol": "SASL_SSL" if listener == "SASL_SSL" else "SSL",
            "ssl.ca.location": str(ca or self.certs.ca),
        }
        if listener == "SASL_SSL":
            props |= {"sasl.mechanism": SCRAM, "sasl.username": user or "", "sasl.password": password or ""}
        return props


def relay_kafka_section(kafka: TlsKafka, listener: str, **properties: str) -> dict:
    """The relay's `kafka:` config for a listener of `kafka` (bootstrap split off)."""
    props = kafka.client_properties(listener)
    bootstrap = props.pop("bootstrap.servers")
    props.pop("sasl.username", None)
    props.pop("sasl.password", None)
    props |= properties
    return {"bootstrap_servers": bootstrap, "properties": props}
