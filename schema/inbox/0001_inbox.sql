-- inbox 0001: the consumer side of exactly-once processing. For the databases of the services
-- that CONSUME the relay's topics (usually not the outbox database): a deduplication store
-- keyed by (consumer, outbox-event-id), the function that records an id and says whether it
-- was new, and a retention purge. Not applied by `outbox-relay migrate`; apply it with
--   psql -v ON_ERROR_STOP=1 -1 -f schema/inbox/0001_inbox.sql "$CONSUMER_DATABASE_URL"
-- Every statement is idempotent, so a re-run changes nothing. Tested on PostgreSQL 15.
--
-- The pattern (README.md, "Consuming exactly once"): in ONE transaction, call
-- inbox.record(consumer, event_id) and apply the event only if it returned true; commit; then
-- commit the Kafka offset. A redelivered event (a crash before the offset commit, a rebalance,
-- a replay) finds its id recorded and changes nothing.

CREATE SCHEMA IF NOT EXISTS inbox;

CREATE TABLE IF NOT EXISTS inbox.processed (
    -- Who processed the event: one name per consuming application (not per instance), so
    -- that two applications reading the same topic each apply every event once.
    consumer     text        NOT NULL CHECK (consumer <> ''),
    -- The Kafka header outbox-event-id (outbox.events.event_id in the producer's database).
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
-- For the purge: the oldest rows first, without scanning the table.
CREATE INDEX IF NOT EXISTS processed_processed_at_idx ON inbox.processed (processed_at);

-- Records the id; true if it was new (apply the event), false if it was recorded before (a
-- redelivery: skip it). Insert-if-not-exists on the primary key, so concurrent redeliveries
-- are decided by the unique index, never by a read-then-write race:
-- * READ COMMITTED: a second session recording the same id while the first has not ended
--   waits for it; first commits -> false, first rolls back -> true.
-- * REPEATABLE READ and SERIALIZABLE: the same wait, but when the first commits the second
--   gets a serialization failure (SQLSTATE 40001) instead of false, because the row it
--   conflicts with is not in its snapshot; likewise for an id recorded by a transaction that
--   committed after the snapshot was taken. Retry the whole transaction: in a new snapshot
--   record() returns false. First rolls back -> true, no error.
-- Either way at most one transaction that got true commits.
CREATE OR REPLACE FUNCTION inbox.record(consumer text, event_id uuid) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH inserted AS (
        INSERT INTO inbox.processed (consumer, event_id) VALUES ($1, $2)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM inserted)
$$;

-- Retention: deletes at most `batch` ids recorded more than `older_than` ago (all consumers),
-- oldest first, and returns how many it deleted. Call it until it returns less than `batch`,
-- each call its own transaction (or CALL inbox.purge_all, below), so that no purge holds
-- locks or a snapshot for long. Rows that another session holds locked are skipped, not
-- waited for. The window must be longer than any redelivery can come late: topic retention,
-- the longest consumer lag, a replay from the beginning. An event redelivered after its id
-- was purged is applied again.
CREATE OR REPLACE FUNCTION inbox.purge(older_than interval, batch integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deleted integer;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'inbox.purge: older_than must be an interval of 0 or more, got %',
            coalesce(older_than::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF batch IS NULL OR batch < 1 OR batch > 100000 THEN
        RAISE EXCEPTION 'inbox.purge: batch must be between 1 and 100000, got %',
            coalesce(batch::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    DELETE FROM inbox.processed p
    USING (SELECT o.consumer, o.event_id FROM inbox.processed o
           WHERE o.processed_at < now() - older_than
           ORDER BY o.processed_at
           LIMIT batch
           FOR UPDATE SKIP LOCKED) old
    WHERE p.consumer = old.consumer AND p.event_id = old.event_id;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END $$;

-- The whole purge in batches, committing after each: `CALL inbox.purge_all('30 days', 1000);`
-- outside a transaction block (psql -c, cron). It repeats inbox.purge until a batch comes back
-- short; `deleted` returns the total.
CREATE OR REPLACE PROCEDURE inbox.purge_all(older_than interval, batch integer,
                                            INOUT deleted bigint DEFAULT 0)
-- No SET search_path here: a procedure with a SET clause may not COMMIT. It is SECURITY
-- INVOKER and names everything with its schema.
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    deleted := 0;
    LOOP
        n := inbox.purge(older_than, batch);
        deleted := deleted + n;
        COMMIT;
        EXIT WHEN n < batch;
    END LOOP;
END $$;

-- The role: a NOLOGIN group for the consuming services' login roles, e.g.
--   CREATE ROLE orders_consumer LOGIN PASSWORD '...' IN ROLE inbox_consumer;
-- It may record ids and purge, nothing else: the table itself is reachable only through the
-- SECURITY DEFINER functions above (the services' own tables are granted by their owners).
DO $$
BEGIN
    -- Roles belong to the whole cluster: two databases may install at once, hence the handler.
    BEGIN
        CREATE ROLE inbox_consumer NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END $$;

REVOKE ALL ON SCHEMA inbox FROM PUBLIC;
REVOKE ALL ON inbox.processed FROM PUBLIC;
REVOKE ALL ON FUNCTION inbox.record(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION inbox.purge(interval, integer) FROM PUBLIC;
REVOKE ALL ON PROCEDURE inbox.purge_all(interval, integer, bigint) FROM PUBLIC;
GRANT USAGE ON SCHEMA inbox TO inbox_consumer;
GRANT EXECUTE ON FUNCTION inbox.record(text, uuid) TO inbox_consumer;
GRANT EXECUTE ON FUNCTION inbox.purge(interval, integer) TO inbox_consumer;
GRANT EXECUTE ON PROCEDURE inbox.purge_all(interval, integer, bigint) TO inbox_consumer;
