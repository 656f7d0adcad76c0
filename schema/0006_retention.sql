-- 0006: retention of published (and, if configured, dead-lettered) rows.
--
-- The relay deletes through these two functions, never with DELETE on the table: its role
-- gets EXECUTE on them and no DELETE privilege, so it cannot delete a pending row even by
-- mistake. Each call deletes at most max_rows rows, oldest first, in the caller's (short,
-- autocommitted) transaction; rows locked by someone else (a mark being recorded again, a
-- replay) are skipped, never waited for, and taken by a later call.
--
-- Why a published row may go: published_at is set only after Kafka acknowledged the row's
-- message, and nothing ever clears it again (a mark keeps the first time, replay deletes
-- and re-inserts dead-lettered rows only). The condition is checked again on the row
-- itself by the DELETE, so a row that is pending at that moment is never deleted.
--
-- Replication mode: the publication carries inserts only (publish = 'insert'), so these
-- deletes never reach the stream; a relay that created its publication with other options
-- by hand still ignores Delete messages (they carry no outbox row).
CREATE OR REPLACE FUNCTION outbox.delete_published(older_than interval, max_rows integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH doomed AS (
        SELECT id FROM outbox.events
        WHERE published_at < now() - older_than
        ORDER BY published_at
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM outbox.events e USING doomed d
        WHERE e.id = d.id AND e.published_at < now() - older_than
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone;
$$;

-- Dead-lettered rows wait for a human (`outbox-relay replay`); the relay deletes them only
-- when retention.dead_lettered_after_s is set.
CREATE OR REPLACE FUNCTION outbox.delete_dead_lettered(older_than interval, max_rows integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH doomed AS (
        SELECT id FROM outbox.events
        WHERE dead_lettered_at < now() - older_than
        ORDER BY id
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM outbox.events e USING doomed d
        WHERE e.id = d.id AND e.dead_lettered_at < now() - older_than
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone;
$$;

REVOKE ALL ON FUNCTION outbox.delete_published(interval, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.delete_dead_lettered(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.delete_published(interval, integer) TO outbox_relay;
GRANT EXECUTE ON FUNCTION outbox.delete_dead_lettered(interval, integer) TO outbox_relay;

-- A queue table: rows are inserted, updated once (the mark) and deleted. Autovacuum's
-- defaults wait for 20% of the table to be dead before vacuuming; 2% keeps the table and
-- its indexes near their working size. Takes only a SHARE UPDATE EXCLUSIVE lock.
ALTER TABLE outbox.events SET (autovacuum_vacuum_scale_factor = 0.02,
                               autovacuum_vacuum_insert_scale_factor = 0.02);
