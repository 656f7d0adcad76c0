"""Integration-test harness for outbox-relay: throwaway PostgreSQL and Kafka
servers, the relay process, service-like writers and the delivery audit.
Used by the pytest suite, demo.sh and the benchmarks."""

from . import debezium
from .audit import AuditReport, OutboxRow, audit, fetch_rows
from .replication import Recvlogical, SlotState, drop_database_slots, lsn_int, lsn_text, slot_state
from .relay import Relay, RelayError, deep_merge, relay_binary, to_yaml
from .servers import Kafka, KafkaReader, PgBouncer, Postgres, Record, ServerError, read_env_file, start_all
from .wait import WaitTimeout, hold, wait_until
from .workload import Writers, enqueue, setup_keys

__all__ = [
    "AuditReport",
    "Kafka",
    "KafkaReader",
    "OutboxRow",
    "PgBouncer",
    "Postgres",
    "Record",
    "Relay",
    "RelayError",
    "Recvlogical",
    "SlotState",
    "drop_database_slots",
    "lsn_int",
    "lsn_text",
    "slot_state",
    "ServerError",
    "WaitTimeout",
    "Writers",
    "audit",
    "deep_merge",
    "enqueue",
    "fetch_rows",
    "read_env_file",
    "relay_binary",
    "setup_keys",
    "start_all",
    "to_yaml",
    "hold",
    "wait_until",
]
