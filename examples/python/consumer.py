"""Applies each event of the topic once, through the inbox (schema/inbox/0001_inbox.sql).

    CONSUMER_DSN=... KAFKA_BOOTSTRAP=... python consumer.py TOPIC GROUP EXPECTED

Stops after EXPECTED messages (applied or already applied). Kafka delivers at least once; the
event id is recorded in the same transaction as the business change, and the offset is
committed only after it, so a redelivered event is skipped.
"""
import json
import os
import sys
import uuid

import psycopg
from confluent_kafka import Consumer


def apply(db: psycopg.Connection, event_id: uuid.UUID, payload: dict) -> bool:
    while True:  # a concurrent redelivery at REPEATABLE READ/SERIALIZABLE ends in 40001: retry
        try:
            with db.transaction():
                fresh = db.execute("SELECT inbox.record(%s::text, %s::uuid)",
                                   ("orders-projection", event_id)).fetchone()[0]
                if fresh:
                    db.execute("INSERT INTO order_projection (event_id, order_id, status) VALUES (%s, %s, %s)",
                               (event_id, payload["order"], payload["status"]))
                return fresh
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
            continue


def main(topic: str, group: str, expected: int) -> None:
    consumer = Consumer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP"], "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    seen = 0
    with psycopg.connect(os.environ["CONSUMER_DSN"], autocommit=True) as db:
        while seen < expected:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            event_id = uuid.UUID(dict(msg.headers())["outbox-event-id"].decode())
            fresh = apply(db, event_id, json.loads(msg.value()))
            consumer.commit(msg, asynchronous=False)  # only after the transaction committed
            print(("applied" if fresh else "skipped") + f" {event_id}", flush=True)
            seen += 1
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
