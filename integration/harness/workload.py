"""Concurrent writers that enqueue outbox events the way a service does.

Each transaction locks the business rows of its keys (SELECT ... FOR UPDATE, in
key order, so writers never deadlock), bumps their per-key sequence number and
calls outbox.enqueue() in the same transaction. Per key the transactions are
thus serialised, and outbox id order equals the per-key sequence order.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Callable, Optional, Sequence

SETUP_SQL = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.key_state (key text PRIMARY KEY, seq bigint NOT NULL DEFAULT 0);
"""


def setup_keys(conn, keys: Sequence[str]) -> None:
    conn.execute(SETUP_SQL)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO shop.key_state (key) VALUES (%s) ON CONFLICT DO NOTHING", [(k,) for k in keys])
    conn.commit()


def enqueue(conn, topic: str, key: Optional[str], payload: bytes, headers: Optional[dict] = None) -> str:
    """outbox.enqueue(topic, key, bytea payload, jsonb headers) -> event_id text."""
    row = conn.execute(
        "SELECT outbox.enqueue(%s::text, %s::text, %s::bytea, %s::jsonb)::text",
        (topic, key, payload, json.dumps(headers or {})),
    ).fetchone()
    return row[0]


class Writers:
    """`threads` writers enqueue `total` events over `keys` into `topic`.

    pause()/resume() hold the writers at transaction boundaries (pause returns
    once none is inside a transaction). With retry=True a writer whose
    connection fails reconnects and retries until retry_timeout_s."""

    def __init__(
        self,
        connect: Callable[[], object],
        topic: str,
        keys: Sequence[str],
        total: int,
        threads: int = 8,
        max_events_per_tx: int = 4,
        retry: bool = False,
        retry_timeout_s: float = 60.0,
        payload_size: int = 0,
        seed: int = 1,
        track_lsn: bool = False,
    ):
        self.connect = connect
        self.topic = topic
        self.keys = list(keys)
        self.total = total
        self.threads_n = threads
        self.max_per_tx = max(1, min(max_events_per_tx, len(self.keys)))
        self.retry = retry
        self.retry_timeout_s = retry_timeout_s
        self.payload_pad = "x" * payload_size
        self.seed = seed
        # track_lsn: per committed transaction (event_ids, pre, post) with the WAL insert
        # position just before COMMIT (< the commit's end LSN) and just after it (>= it).
        self.track_lsn = track_lsn
        self.txn_lsns: list[tuple[list[str], int, Optional[int]]] = []
        self._rng = random.Random(seed)  # batch sizes; used under _lock only
        self._lock = threading.Condition()
        self._remaining = total
        self.committed = 0
        self.transactions = 0
        self.retries = 0
        self.errors: list[BaseException] = []
        self._paused = False
        self._busy = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None

    # ------------------------------------------------------------------ control
    def start(self) -> "Writers":
        self.started_at = time.monotonic()
        for i in range(self.threads_n):
            t = threading.Thread(target=self._run, args=(i,), name=f"writer-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def pause(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            self._paused = True
            if not self._lock.wait_for(lambda: self._busy == 0, timeout_s):
                raise TimeoutError(f"writers still busy after {timeout_s}s")

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._lock.notify_all()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._paused = False
            self._lock.notify_all()

    def join(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise TimeoutError(f"writers {alive} still running after {timeout_s}s")
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} writer errors, first: {self.errors[0]!r}") from self.errors[0]

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def wait_committed(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            return self._lock.wait_for(
                lambda: self.committed >= n or self.errors or self.done, max(0.0, deadline - time.monotonic())
            ) and self.committed >= n

    # ------------------------------------------------------------------- worker
    def _claim(self) -> int:
        with self._lock:
            self._lock.wait_for(lambda: not self._paused or self._stop)
            if self._stop or self._remaining <= 0:
                return 0
            n = min(self._remaining, self._rng.randint(1, self.max_per_tx))
            self._remaining -= n
            self._busy += 1
            return n

    def _release(self, n_committed: int, n_unused: int) -> None:
        with self._lock:
            self._busy -= 1
            self.committed += n_committed
            self._remaining += n_unused
            if n_committed:
                self.transactions += 1
            self._lock.notify_all()

    def _run(self, idx: int) -> None:
        rng = random.Random(self.seed * 1000 + idx)
        conn = None
        try:
            while True:
                n = self._claim()
                if n == 0:
                    break
                keys = sorted(rng.sample(self.keys, n))
                deadline = time.monotonic() + self.retry_timeout_s
                while True:
                    try:
                        if conn is None or conn.closed:
                            conn = self.connect()
                        self._transaction(conn, keys, idx)
                        self._release(n, 0)
                        break
                    except Exception as e:  # noqa: BLE001
                        import psycopg

                        retryable = isinstance(e, psycopg.OperationalError)
                        try:
                            if conn is not None:
                                conn.close()
                        except Exception:  # noqa: BLE001
                            pass
                        conn = None
                        if self.retry and retryable and time.monotonic() < deadline:
                            with self._lock:
                                self.retries += 1
                            time.sleep(0.2)  # back-off between reconnect attempts
                            continue
                        self._release(0, n)
                        raise
        except BaseException as e:  # noqa: BLE001
            with self._lock:
                self.errors.append(e)
                self._lock.notify_all()
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            with self._lock:
                self._lock.notify_all()
            if all(not t.is_alive() or t is threading.current_thread() for t in self._threads):
                self.finished_at = time.monotonic()

    @property
    def max_pre_commit_lsn(self) -> Optional[int]:
        """(track_lsn) A position below the end of the last committed transaction:
        a slot confirmed past every transaction is at least here."""
        with self._lock:
            return max((pre for _, pre, _ in self.txn_lsns), default=None)

    def _transaction(self, conn, keys: Sequence[str], writer: int) -> None:
        from .replication import lsn_int

        ids = []
        with conn.transaction():
            for k in keys:
                seq = conn.execute("SELECT seq FROM shop.key_state WHERE key = %s FOR UPDATE", (k,)).fetchone()[0]
                seq += 1
                conn.execute("UPDATE shop.key_state SET seq = %s WHERE key = %s", (seq, k))
                payload = json.dumps({"key": k, "seq": seq, "writer": writer, "pad": self.payload_pad}).encode()
                ids.append(enqueue(conn, self.topic, k, payload, {"type": "TestEvent", "seq": str(seq)}))
            if self.track_lsn:
                pre = lsn_int(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        if self.track_lsn:
            try:
                post = lsn_int(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
            except Exception:  # noqa: BLE001 - committed already: must not be retried
                post = None
            with self._lock:
                self.txn_lsns.append((ids, pre, post))
