-- 0003: the wake-up hint keeps its state in a sequence instead of a table row.
--
-- 0001's hint_relay() locked outbox.relay_wakeup's row (FOR UPDATE SKIP LOCKED). In a
-- REPEATABLE READ or SERIALIZABLE service transaction whose snapshot predates another
-- writer's enqueue, that lock failed with "could not serialize access due to concurrent
-- update": the outbox made a service transaction fail. A sequence is outside MVCC: nextval()
-- never waits, never conflicts and takes no snapshot, at every isolation level.
--
-- "Armed" now means: the next nextval() returns 1. The relay re-arms with
-- setval(seq, 1, false); the first writer after that gets 1 and sends the NOTIFY, the
-- others get 2, 3, ... and send nothing. A writer that got 1 and rolls back sends nothing;
-- the relay's polling interval covers that, as before.
--
-- outbox.relay_wakeup stays so that a relay of an older version keeps working during a
-- rolling upgrade (it then wakes on its interval only); nothing uses it any more.
CREATE SEQUENCE IF NOT EXISTS outbox.relay_wakeup_seq AS bigint MINVALUE 1 START 1 CYCLE;

CREATE OR REPLACE FUNCTION outbox.hint_relay() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF nextval('outbox.relay_wakeup_seq') = 1 THEN
        PERFORM pg_notify('outbox_events', '');
    END IF;
END $$;
REVOKE ALL ON FUNCTION outbox.hint_relay() FROM PUBLIC;

GRANT SELECT, UPDATE ON SEQUENCE outbox.relay_wakeup_seq TO outbox_relay;
