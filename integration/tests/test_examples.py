"""The service examples under examples/<lang>/ (Python, Node.js) run against the real servers: each writes
business rows and their events in one transaction (a retried call enqueues nothing new), the
relay publishes them, and the example consumer applies each event once through the inbox, a
second consumer group reading the whole topic again included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parents[2]
INBOX_SQL = REPO / "schema" / "inbox" / "0001_inbox.sql"
CACHE = Path.home() / ".cache" / "outbox-relay"
# language: (its folder, how to run a script, the setup step, with its modules cached)
LANGUAGES = {
    "python": ("python", [sys.executable], "{}.py", None),
    "node": ("node", ["node"], "{}.js", ["npm", "ci", "--cache", str(CACHE / "npm"), "--no-audit", "--no-fund"]),
}


def _psql(dsn: str, path: Path) -> None:
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path), dsn],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{path}: {r.stdout}{r.stderr}"


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_example(ctx, language):
    folder, runner, script, setup = LANGUAGES[language]
    example = REPO / "examples" / folder
    if shutil.which(runner[0]) is None:
        pytest.fail(f"{runner[0]} is not installed (integration/env/install-deps.sh)")
    if setup:
        r = subprocess.run(setup, cwd=example, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    topic = ctx.topic(partitions=2)
    for path in (INBOX_SQL, example / "schema.sql"):
        _psql(ctx.dsn, path)
    parts = conninfo_to_dict(ctx.dsn)  # a URL: node-postgres reads no key=value strings
    url = f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    env = dict(os.environ, OUTBOX_DSN=url, CONSUMER_DSN=url, OUTBOX_TOPIC=topic,
               KAFKA_BOOTSTRAP=ctx.kafka.bootstrap)

    def run(name: str, *args: str) -> list[str]:
        r = subprocess.run([*runner, script.format(name), *args], cwd=example, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()

    calls = [("1", "paid"), ("2", "paid"), ("1", "shipped"), ("1", "paid")]  # the last: a retry
    ids = [run("producer", *call)[0] for call in calls]
    assert ids[3] == ids[0] and len(set(ids)) == 3
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
