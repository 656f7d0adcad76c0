-- 0015: who published a row, when it was not this relay.
--
-- `outbox-relay takeover` marks published the rows another publisher (Debezium's PostgreSQL
-- connector, from its replication slot) had already put in Kafka when the relay took over,
-- and names that publisher here, e.g. 'takeover of slot debezium'. NULL: the relay published
-- the row (or it is pending). `audit` counts such rows apart: their messages were written by
-- the other publisher, which may carry no outbox-id header.
-- A nullable column without a default: adding it rewrites nothing.
ALTER TABLE outbox.events ADD COLUMN IF NOT EXISTS published_by text;
GRANT UPDATE (published_by) ON outbox.events TO outbox_relay;
