"""A sample "orders service" for the demo: places orders with the outbox pattern.

Each order is one transaction: INSERT INTO shop.orders, then
outbox.enqueue('orders', <order id>, <JSON payload bytes>, '{"type":"OrderPlaced"}')
in the SAME transaction, so the event exists if and only if the order does.
Several threads do this concurrently. Afterwards the service waits until the
relay marked every event published, reads the topic back from Kafka and
prints what arrived (lost / duplicated), and exits non-zero on any loss.

    python sample_service.py --dsn DSN --bootstrap HOST:PORT [--events N] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402

from harness import audit, fetch_rows, wait_until  # noqa: E402
from harness.servers import KafkaReader  # noqa: E402

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer    text        NOT NULL,
    amount_cents bigint     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
"""


def place_orders(dsn: str, topic: str, count: int, worker: int, errors: list) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(count):
                customer = f"customer-{(worker * 7919 + i) % 500}"
                amount = 100 + (i * 37) % 10_000
                with conn.transaction():
                    order_id = conn.execute(
                        "INSERT INTO shop.orders (customer, amount_cents) VALUES (%s, %s) RETURNING id",
                        (customer, amount),
                    ).fetchone()[0]
                    payload = json.dumps(
                        {"order_id": order_id, "customer": customer, "amount_cents": amount}
                    ).encode()
                    conn.execute(
                        "SELECT outbox.enqueue(%s::text, %s::text, %s::bytea, %s::jsonb)",
                        (topic, str(order_id), payload, '{"type":"OrderPlaced"}'),
                    )
    except Exception as e:  # noqa: BLE001
        errors.append(e)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the relay")
    a = ap.parse_args()

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        before = conn.execute("SELECT count(*) FROM outbox.events WHERE topic = %s", (a.topic,)).fetchone()[0]
    if before:
        print(f"note: {before} '{a.topic}' events already in the outbox; they are counted too")

    per = [a.events // a.threads + (1 if t < a.events % a.threads else 0) for t in range(a.threads)]
    errors: list = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=place_orders, args=(a.dsn, a.topic, n, t, errors)) for t, n in enumerate(per)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_written = time.monotonic() - t0
    if errors:
        print(f"service failed: {errors[0]!r}", file=sys.stderr)
        return 1
    print(f"placed {a.events} orders in {t_written:.2f}s from {a.threads} concurrent writers "
          f"({a.events / max(t_written, 1e-9):.0f} orders/s)")

    expected = before + a.events
    with psycopg.connect(a.dsn, autocommit=True) as conn:

        def all_marked():
            total, marked = conn.execute(
                "SELECT count(*), count(published_at) FROM outbox.events WHERE topic = %s", (a.topic,)
            ).fetchone()
            return total >= expected and marked == total

        try:
            wait_until(all_marked, a.timeout, 0.05, "every event marked published")
        except AssertionError as e:
            print(f"relay did not publish everything: {e}", file=sys.stderr)
            return 1
        t_published = time.monotonic() - t0
        rows = fetch_rows(conn, a.topic)

    with KafkaReader(a.bootstrap, a.topic) as reader:
        records = reader.read(len(rows), timeout_s=60, idle_s=1.5)
    rep = audit(rows, records)
    lost, dup = len(rep.lost), rep.duplicate_count
    print(
        f"published {len(rows)} events, read back {len(records)} from Kafka, {lost} lost, {dup} duplicated, "
        f"{len(rows) / max(t_published, 1e-9):.0f} events/s (first insert to last event marked: {t_published:.2f}s)"
    )
    problems = rep.problems()
    for p in problems:
        print(f"  problem: {p}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
