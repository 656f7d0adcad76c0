"""Logical replication helpers: LSNs, the state of a slot, dropping a database's
slots (a database with a slot cannot be dropped), and a competing slot consumer
(pg_recvlogical) for the tests of replication mode."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Optional

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))


def lsn_int(text: Optional[str]) -> Optional[int]:
    """'16/B374D848' -> 0x16B374D848 (None stays None)."""
    if text is None:
        return None
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value: Optional[int]) -> str:
    if value is None:
        return "NULL"
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclasses.dataclass(frozen=True)
class SlotState:
    name: str
    database: str
    plugin: Optional[str]
    active: bool
    active_pid: Optional[int]
    wal_status: Optional[str]
    restart_lsn: Optional[int]
    confirmed_flush_lsn: Optional[int]
    current_lsn: int  # pg_current_wal_lsn() in the same query
    insert_lsn: int  # pg_current_wal_insert_lsn(): may be ahead of it (asynchronous commits)

    @property
    def retained_bytes(self) -> Optional[int]:
        """WAL the slot holds back: pg_current_wal_lsn() - restart_lsn."""
        return None if self.restart_lsn is None else self.current_lsn - self.restart_lsn

    def describe(self) -> str:
        ret = self.retained_bytes
        return (
            f"slot {self.name}: active={self.active} (pid {self.active_pid}) wal_status={self.wal_status} "
            f"restart_lsn={lsn_text(self.restart_lsn)} confirmed_flush_lsn={lsn_text(self.confirmed_flush_lsn)} "
            f"current={lsn_text(self.current_lsn)} retained={'-' if ret is None else f'{ret / 1e6:.1f} MB'}"
        )


SLOT_SQL = (
    "SELECT slot_name::text, database::text, plugin::text, active, active_pid, wal_status,"
    " restart_lsn::text, confirmed_flush_lsn::text, pg_current_wal_lsn()::text,"
    " pg_current_wal_insert_lsn()::text"
    " FROM pg_replication_slots WHERE slot_name = %s"
)


def slot_state(conn, name: str) -> Optional[SlotState]:
    row = conn.execute(SLOT_SQL, (name,)).fetchone()
    if row is None:
        return None
    return SlotState(
        name=row[0],
        database=row[1],
        plugin=row[2],
        active=bool(row[3]),
        active_pid=row[4],
        wal_status=row[5],
        restart_lsn=lsn_int(row[6]),
        confirmed_flush_lsn=lsn_int(row[7]),
        current_lsn=lsn_int(row[8]),
        insert_lsn=lsn_int(row[9]),
    )


def drop_database_slots(pg, db: str, timeout_s: float = 30.0) -> list[str]:
    """Drop every replication slot of database `db` (call once its consumers are
    stopped). A walsender of a consumer that just died may still hold its slot:
    it is terminated (it serves nobody any more). Returns the dropped names."""
    import psycopg

    dropped: list[str] = []
    deadline = time.monotonic() + timeout_s
    with pg.connect("postgres", autocommit=True) as c:
        while True:
            rows = c.execute(
                "SELECT slot_name::text, active, active_pid FROM pg_replication_slots WHERE database = %s", (db,)
            ).fetchall()
            if not rows:
                return dropped
            for name, active, pid in rows:
                if active and pid is not None:
                    c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    continue
                try:
                    c.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                    dropped.append(name)
                except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                    pass  # taken again meanwhile / dropped by someone else: next round
            if time.monotonic() > deadline:
                raise TimeoutError(f"replication slots of {db} still there after {timeout_s}s: {rows}")
            time.sleep(0.1)


class Recvlogical:
    """`pg_recvlogical --start` on a slot: another consumer holding it."""

    def __init__(self, dsn: str, slot: str, publication: str, log_path: Path):
        self.log_path = Path(log_path)
        self.cmd = [
            str(PGBIN / "pg_recvlogical"),
            "-d",
            dsn,
            "-S",
            slot,
            "--start",
            "-f",
            "/dev/null",
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            f"publication_names={publication}",
        ]
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Recvlogical":
        log = open(self.log_path, "a")
        try:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
