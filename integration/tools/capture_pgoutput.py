#!/usr/bin/env python3
"""Capture real pgoutput messages from a throwaway PostgreSQL 15, for the decoder's unit tests.

    integration/tools/capture_pgoutput.py [--out tests/data/pgoutput] [--pgbin DIR]

Starts its own server (initdb in a temporary directory, a free 127.0.0.1 port, wal_level=logical),
creates an outbox.events table like schema/0001 plus two other tables and an enum type, makes a
pgoutput slot, runs the scenario below, and reads the messages back with
pg_logical_slot_peek_binary_changes, one bytea per pgoutput message. Each one is written to
NNN_<kind>.bin in stream order; the Insert of the first transaction is captured a second time with
the `binary` option (binary_insert.bin). The server is always stopped and its directory removed.

Needs: the PostgreSQL 15 server binaries and psql. As root, the server and psql run as user
postgres (initdb refuses root). Only the standard library is used.

What a file holds: the bytes a walsender sends as the payload of an XLogData ('w') CopyData
message, after its 25-byte header. The SQL interface and the walsender run the same plugin code,
so the bytes are the same; only the session settings that format text values (TimeZone, DateStyle,
bytea_output) come from the session doing the decoding. The script fixes TimeZone=UTC so the
captured timestamps do not depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

KINDS = {
    "B": "begin",
    "C": "commit",
    "O": "origin",
    "R": "relation",
    "Y": "type",
    "I": "insert",
    "U": "update",
    "D": "delete",
    "T": "truncate",
    "M": "message",
}

SETUP = r"""
CREATE SCHEMA outbox;
CREATE TABLE outbox.events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    topic            text        NOT NULL CHECK (topic <> ''),
    key              text,
    payload          bytea,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    dead_lettered_at timestamptz
);
-- Update/Delete/Truncate come from other tables: the relay's publication would not see them.
CREATE TABLE public.accounts (id integer PRIMARY KEY, name varchar(40) NOT NULL, notes text);
-- EXTERNAL: stored out of line uncompressed, so an update that leaves it alone sends 'u'.
ALTER TABLE public.accounts ALTER COLUMN notes SET STORAGE EXTERNAL;
CREATE TYPE public.mood AS ENUM ('happy', 'sad');
CREATE TABLE public.moods (id integer PRIMARY KEY, m public.mood NOT NULL);
ALTER TABLE public.moods REPLICA IDENTITY FULL;
-- Rows from before the slot: their inserts are not in the stream.
INSERT INTO public.accounts VALUES (1, 'alice', repeat('n', 5000)), (2, 'bob', 'short');
CREATE PUBLICATION outbox_pub FOR TABLE outbox.events;
CREATE PUBLICATION other_pub FOR TABLE public.accounts, public.moods;
SELECT 'slot' FROM pg_create_logical_replication_slot('capture', 'pgoutput');
SELECT pg_replication_origin_create('upstream');
"""

# One statement per transaction unless BEGIN/COMMIT says otherwise (psql autocommit).
SCENARIO = r"""
-- 1: a single-row insert (Begin, Relation, Insert, Commit)
INSERT INTO outbox.events (event_id, topic, key, payload, headers, created_at)
VALUES ('00000000-0000-4000-8000-000000000001', 'orders', 'order-1',
        convert_to('{"id":1}', 'UTF8'), '{"trace":"abc"}', '2024-01-02 03:04:05.123456+00');
-- 2: a multi-row insert (no Relation: pgoutput sent it already)
INSERT INTO outbox.events (event_id, topic, key, payload)
VALUES ('00000000-0000-4000-8000-000000000002', 'orders', 'order-2', '\x01'),
       ('00000000-0000-4000-8000-000000000003', 'orders', 'order-3', '\x02'),
       ('00000000-0000-4000-8000-000000000004', 'payments', 'pay-1', '\x03');
-- 3: NULL key and payload
INSERT INTO outbox.events (event_id, topic, key, payload)
VALUES ('00000000-0000-4000-8000-000000000005', 'audit', NULL, NULL);
-- 4: a new column (the DDL transaction sends nothing), then an insert: a new Relation first
ALTER TABLE outbox.events ADD COLUMN tenant text;
INSERT INTO outbox.events (event_id, topic, key, payload, tenant)
VALUES ('00000000-0000-4000-8000-000000000006', 'orders', 'order-4', '\xff00', 'acme');
-- 5: updates and a delete on another table: 'u' (toast left alone), 'K' (key changed), 'K'
BEGIN;
UPDATE public.accounts SET name = 'alice2' WHERE id = 1;
UPDATE public.accounts SET id = 3 WHERE id = 2;
DELETE FROM public.accounts WHERE id = 3;
COMMIT;
-- 6: a column of a user-defined type (Type before Relation); REPLICA IDENTITY FULL update: 'O'
INSERT INTO public.moods VALUES (1, 'happy');
UPDATE public.moods SET m = 'sad' WHERE id = 1;
-- 7: TRUNCATE of two tables, RESTART IDENTITY
TRUNCATE public.accounts, public.moods RESTART IDENTITY;
-- 8: logical decoding messages: transactional (inside Begin/Commit), then not
SELECT 'msg' FROM pg_logical_emit_message(true, 'p', 'hello');
SELECT 'msg' FROM pg_logical_emit_message(false, 'p', 'now');
-- 9: a transaction replayed from elsewhere: Origin after Begin
SELECT 'origin' FROM pg_replication_origin_session_setup('upstream');
BEGIN;
SELECT 'origin' FROM pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-02 03:04:05+00');
INSERT INTO outbox.events (event_id, topic, key, payload)
VALUES ('00000000-0000-4000-8000-000000000007', 'orders', 'from-upstream', NULL);
COMMIT;
SELECT 'origin' FROM pg_replication_origin_session_reset();
"""

PEEK = """SELECT lsn, xid, encode(data, 'hex')
FROM pg_logical_slot_peek_binary_changes('capture', NULL, NULL, 'proto_version', '{proto}',
     'publication_names', 'outbox_pub,other_pub', 'messages', 'true'{extra})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_server_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Server:
    def __init__(self, pgbin: Path):
        self.pgbin = pgbin
        self.dir = Path(tempfile.mkdtemp(prefix="pgoutput-capture-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.started = False
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o755)

    def start(self) -> None:
        subprocess.run(
            as_server_user([str(self.pgbin / "initdb"), "-D", str(self.data), "-U", "postgres",
                            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL)
        opts = (f"-c wal_level=logical -c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.dir} -c TimeZone=UTC -c DateStyle=ISO "
                f"-c fsync=off -c max_replication_slots=4")
        self.started = True  # from here on, stop() must run even if the start half-failed
        subprocess.run(
            as_server_user([str(self.pgbin / "pg_ctl"), "-D", str(self.data), "-l",
                            str(self.dir / "log"), "-w", "-t", "60", "-o", opts, "start"]),
            check=True, stdout=subprocess.DEVNULL)

    def psql(self, sql: str) -> str:
        out = subprocess.run(
            as_server_user([str(self.pgbin / "psql"), "-X", "-q", "-At", "-F", "\t",
                            "-v", "ON_ERROR_STOP=1", "-h", str(self.dir), "-p", str(self.port),
                            "-U", "postgres", "-d", "postgres", "-f", "-"]),
            input=sql, text=True, check=True, capture_output=True)
        return out.stdout

    def stop(self) -> None:
        if self.started:
            subprocess.run(as_server_user([str(self.pgbin / "pg_ctl"), "-D", str(self.data),
                                           "-m", "fast", "-w", "stop"]),
                           check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def peek(server: Server, proto: int, extra: str = "") -> list[tuple[str, str, bytes]]:
    rows = []
    for line in server.psql(PEEK.format(proto=proto, extra=extra) + ";").splitlines():
        lsn, xid, data = line.split("\t")
        rows.append((lsn, xid, bytes.fromhex(data)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "pgoutput")
    ap.add_argument("--pgbin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    args = ap.parse_args()

    server = Server(args.pgbin)
    try:
        server.start()
        server.psql(SETUP)
        server.psql(SCENARIO)
        v1 = peek(server, 1)
        v2 = peek(server, 2)
        binary = peek(server, 1, ", 'binary', 'true'")
    finally:
        server.stop()

    # Without 'streaming' on, version 2 sends exactly what version 1 does.
    if [r[2] for r in v1] != [r[2] for r in v2]:
        print("proto_version 2 differs from 1 without streaming", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.bin"):
        old.unlink()
    print("file\tlsn\txid")
    for n, (lsn, xid, data) in enumerate(v1, start=1):
        name = f"{n:03d}_{KINDS.get(chr(data[0]), 'unknown')}.bin"
        (args.out / name).write_bytes(data)
        print(f"{name}\t{lsn}\t{xid}")
    first_insert = next(d for _, _, d in binary if d[:1] == b"I")
    (args.out / "binary_insert.bin").write_bytes(first_insert)
    print("binary_insert.bin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
