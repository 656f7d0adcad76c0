"""The service examples under examples/<lang>/ (Python, Node.js, Go, Java) run against the real
servers: each writes business rows and their events in one transaction (a retried call enqueues
nothing new), the relay publishes them, and the example consumer applies each event once through
the inbox, a second consumer group reading the whole topic again included."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parents[2]
INBOX_SQL = REPO / "schema" / "inbox" / "0001_inbox.sql"
EXAMPLE_SQL = REPO / "examples" / "schema.sql"
CACHE = Path.home() / ".cache" / "outbox-relay"
# Go's module and build caches: the ones integration/env/helm.sh uses.
GO_ENV = {"GOMODCACHE": str(CACHE / "go" / "mod"), "GOCACHE": str(CACHE / "go" / "build"),
          "GOPATH": str(CACHE / "go" / "path"), "GOFLAGS": "-buildvcs=false"}


def _url(dsn: str) -> str:  # node-postgres reads no key=value strings; pgx reads both
    p = conninfo_to_dict(dsn)
    return f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"


def _jdbc(dsn: str) -> str:  # PgJDBC takes the user as a parameter, not in the URL
    p = conninfo_to_dict(dsn)
    return f"jdbc:postgresql://{p['host']}:{p['port']}/{p['dbname']}?user={p['user']}"


def _go() -> str | None:
    if shutil.which("go"):
        return "go"
    return "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None


@dataclass(frozen=True)
class Example:
    tools: tuple[str | None, ...]  # what must be installed: None when not found
    command: Callable[[str], list[str]]  # how to run "producer" or "consumer"
    dsn: Callable[[str], str] = _url
    setup: list[str] | None = None  # build or install, dependencies cached under CACHE
    env: dict[str, str] | None = None


GO = _go()
LANGUAGES = {
    "python": Example((sys.executable,), lambda name: [sys.executable, f"{name}.py"]),
    "node": Example(("node", "npm"), lambda name: ["node", f"{name}.js"],
                    setup=["npm", "ci", "--cache", str(CACHE / "npm"), "--no-audit", "--no-fund"]),
    "go": Example((GO,), lambda name: [f"./bin/{name}"],
                  setup=[str(GO), "build", "-o", "bin/", "./producer", "./consumer"], env=GO_ENV),
    "java": Example(("mvn", "javac", "java"),
                    lambda name: ["java", "-cp", "target/classes:target/lib/*", f"outbox.example.{name.capitalize()}"],
                    dsn=_jdbc,
                    setup=["mvn", "-q", "-B", "-Dstyle.color=never", f"-Dmaven.repo.local={CACHE / 'm2'}", "package"]),
}


def _psql(dsn: str, path: Path) -> None:
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path), dsn],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{path}: {r.stdout}{r.stderr}"


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_example(ctx, language):
    example = LANGUAGES[language]
    folder = REPO / "examples" / language
    missing = [tool or language for tool in example.tools if tool is None or shutil.which(tool) is None]
    if missing:
        # Go is the machine's own (install-deps.sh does not install it), as for the Helm build.
        where = "Go 1.21 or newer on PATH, or /usr/local/go" if language == "go" else "integration/env/install-deps.sh"
        pytest.fail(f"{', '.join(missing)}: not installed ({where})")
    env = dict(os.environ, **(example.env or {}))
    if example.setup:
        r = subprocess.run(example.setup, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    topic = ctx.topic(partitions=2)
    for path in (INBOX_SQL, EXAMPLE_SQL):
        _psql(ctx.dsn, path)
    dsn = example.dsn(ctx.dsn)
    env.update(OUTBOX_DSN=dsn, CONSUMER_DSN=dsn, OUTBOX_TOPIC=topic, KAFKA_BOOTSTRAP=ctx.kafka.bootstrap)

    def run(name: str, *args: str) -> list[str]:
        r = subprocess.run([*example.command(name), *args], cwd=folder, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()

    calls = [("1", "paid"), ("2", "paid"), ("1", "shipped"), ("1", "paid")]  # the last: a retry
    ids = [run("producer", *call)[0] for call in calls]
    assert ids[3] == ids[0] and len(set(ids)) == 3
    assert ctx._query("SELECT count(*) FROM outbox.events")[0][0] == 3  # the retry added no row
    relay = ctx.relay().start()
    ctx.wait_all_published(3, 60, relay)
    records = ctx.kafka.consume_all(topic, 3, timeout_s=60)
    assert sorted(r.headers["outbox-event-id"] for r in records) == sorted(set(ids))

    first = run("consumer", topic, f"{topic}-a", "3")
    again = run("consumer", topic, f"{topic}-b", "3")  # every event delivered again
    assert sorted(first[1::2]) == sorted(set(ids)) and set(first[0::2]) == {"applied"}
    assert sorted(again[1::2]) == sorted(set(ids)) and set(again[0::2]) == {"skipped"}
    rows = ctx._query("SELECT event_id::text, order_id, status FROM order_projection ORDER BY order_id, status")
    assert sorted(r[0] for r in rows) == sorted(set(ids))
    assert [(r[1], r[2]) for r in rows] == [(1, "paid"), (1, "shipped"), (2, "paid")]


def test_demo_runs_the_python_example_end_to_end():
    """`integration/demo.sh --example LANG` (the examples' own README path) starts its servers and
    the relay, runs the example's producer and consumer and reports each event applied once."""
    from harness import relay_binary

    r = subprocess.run([str(REPO / "integration" / "demo.sh"), "--no-build", "--example", "python"],
                       env=dict(os.environ, OUTBOX_RELAY_BIN=str(relay_binary())),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the consumer's lines ("applied EVENT_ID"), not migrate's ("applied  0001_outbox_events")
    applied = [line.split()[1] for line in r.stdout.splitlines() if re.fullmatch(r"applied [0-9a-f-]{36}", line)]
    events = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("  order ")]
    assert len(events) == 4 and events[3] == events[0]  # the retry returned the first event
    assert sorted(applied) == sorted(set(events))
    assert "relay exited 0" in r.stdout and "3 events published" in r.stdout


def test_demo_that_fails_to_start_postgres_leaves_no_kafka_running(tmp_path):
    """Regression: when PostgreSQL failed to start, demo.sh's cleanup ran while Kafka was still
    starting, so the Kafka it had launched outlived the script."""
    from harness import relay_binary

    r = subprocess.run([str(REPO / "integration" / "demo.sh"), "--no-build"],
                       env=dict(os.environ, OUTBOX_RELAY_BIN=str(relay_binary()), TMPDIR=str(tmp_path),
                                OUTBOX_PG_BINDIR=str(tmp_path / "no-postgres-here")),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "PostgreSQL did not start" in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    for pid in left:  # stop what the defect left, so the session does not keep it
        subprocess.run(["kill", pid])
    assert left == [], f"processes of the demo still running: {left}"
