-- 0013: source tables, the outbox tables of services that wrote for Debezium's outbox.
--
-- A service keeps inserting into its own outbox table (Debezium's shape: id, aggregatetype,
-- aggregateid, type, payload), and often deletes the row in the same transaction. For each
-- table listed in source.tables, `outbox-relay migrate` installs an AFTER INSERT trigger
-- whose SECURITY DEFINER function copies the new row into outbox.events in the writer's
-- transaction (relay/pg/source_tables.h); everything else of the relay then works on
-- outbox.events as for rows enqueued by outbox.enqueue (docs/guide/coming-from-debezium.md).
--
-- What migrate installed, one row per source table. installed_lsn is read after the
-- trigger's transaction committed (pg_current_wal_insert_lsn()): every transaction that
-- commits after it had the trigger, so its rows of the source table were copied; the ones
-- committed before it had none. A migrate that only replaces the copy function of a trigger
-- already in place keeps the recorded position.
CREATE TABLE IF NOT EXISTS outbox.source_tables (
    -- As configured: schema-qualified, e.g. public.outboxevent.
    source_table    text        PRIMARY KEY,
    -- The column of the source table holding the event id (outbox.events.event_id).
    event_id_column text        NOT NULL,
    installed_lsn   pg_lsn      NOT NULL,
    installed_at    timestamptz NOT NULL DEFAULT now()
);

-- Which source table a row was copied from; NULL for rows enqueued by outbox.enqueue (or
-- inserted into outbox.events directly). No default: adding the column changes only the
-- catalog, the table is not rewritten, and the ACCESS EXCLUSIVE lock it takes is held for
-- an instant (waited for at most lock_timeout by the migration runner, then retried).
ALTER TABLE outbox.events ADD COLUMN IF NOT EXISTS source_table text;

GRANT SELECT ON outbox.source_tables TO outbox_relay;
