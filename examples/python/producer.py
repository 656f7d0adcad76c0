"""Writes a business row and its event in one transaction, keyed for retries.

    OUTBOX_DSN=... [OUTBOX_TOPIC=orders] python producer.py ORDER_ID STATUS

Run it twice with the same arguments (a client retry): the second run finds the event of the
first through its idempotency key and enqueues nothing new. Prints the event id.
"""
import json
import os
import sys

import psycopg


def pay(conn: psycopg.Connection, order_id: int, status: str) -> str:
    with conn.transaction():
        conn.execute(
            "INSERT INTO orders (id, status) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
            (order_id, status),
        )
        # psycopg sends a str untyped (unknown), and enqueue has a bytea and a jsonb overload: cast.
        return conn.execute(
            "SELECT outbox.enqueue(%s::text, %s::text, %s::jsonb, %s::jsonb, %s::text)::text",
            (os.environ.get("OUTBOX_TOPIC", "orders"), str(order_id), json.dumps({"order": order_id, "status": status}),
             json.dumps({"type": "OrderStatus"}), f"order-{order_id}-{status}"),
        ).fetchone()[0]


if __name__ == "__main__":
    with psycopg.connect(os.environ["OUTBOX_DSN"]) as conn:
        print(pay(conn, int(sys.argv[1]), sys.argv[2]))
