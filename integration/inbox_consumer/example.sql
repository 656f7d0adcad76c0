-- The example's business tables (integration/inbox_consumer/README.md). Apply after
-- schema/inbox/0001_inbox.sql, as the tables' owner:
--   psql -v ON_ERROR_STOP=1 -1 -f integration/inbox_consumer/example.sql "$CONSUMER_DATABASE_URL"
-- and grant the consumer's login role what it writes:
--   GRANT USAGE ON SCHEMA example TO my_consumer;
--   GRANT SELECT, INSERT, UPDATE ON example.key_totals TO my_consumer;
--   GRANT INSERT ON example.applied_events TO my_consumer;
-- Neither table would survive a second application of an event unnoticed: a counter and an
-- append-only row per event. The inbox is what keeps them right.
CREATE SCHEMA IF NOT EXISTS example;

-- Events applied per Kafka message key ('' for messages without a key).
CREATE TABLE IF NOT EXISTS example.key_totals (
    key           text   PRIMARY KEY,
    events        bigint NOT NULL,
    payload_bytes bigint NOT NULL
);

-- One row per application (no unique constraint on purpose).
CREATE TABLE IF NOT EXISTS example.applied_events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL,
    key             text        NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);
