-- 0004: replaying dead-lettered rows (`outbox-relay replay`).
--
-- A replayed row is inserted again, not updated in place: replication mode reads inserts
-- only, so an UPDATE that clears dead_lettered_at would never reach the relay there. The copy
-- keeps the event's identity (event_id, the consumers' deduplication key), topic, key,
-- payload, headers and created_at; it gets a new id, so it is published after the rows
-- committed before the replay, and rows replayed together keep their relative order. The
-- old row is deleted in the same transaction; the copy records where it came from and why
-- that one failed.
ALTER TABLE outbox.events ADD COLUMN IF NOT EXISTS replayed_from bigint;

CREATE OR REPLACE FUNCTION outbox.replay(ids bigint[])
RETURNS TABLE (old_id bigint, new_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r outbox.events;
BEGIN
    FOR r IN
        SELECT * FROM outbox.events e
        WHERE e.id = ANY(ids) AND e.dead_lettered_at IS NOT NULL
        ORDER BY e.id
        FOR UPDATE
    LOOP
        DELETE FROM outbox.events e WHERE e.id = r.id;
        INSERT INTO outbox.events (event_id, topic, key, payload, headers, created_at,
                                   last_error, replayed_from)
        VALUES (r.event_id, r.topic, r.key, r.payload, r.headers, r.created_at,
                'replayed; dead-lettered before after ' || r.attempts || ' attempts: ' ||
                    coalesce(r.last_error, 'no reason recorded'),
                r.id)
        RETURNING id INTO new_id;
        old_id := r.id;
        RETURN NEXT;
    END LOOP;
    IF FOUND THEN
        PERFORM outbox.hint_relay();
    END IF;
END $$;
REVOKE ALL ON FUNCTION outbox.replay(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.replay(bigint[]) TO outbox_relay;
