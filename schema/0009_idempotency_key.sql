-- 0009: the service's own idempotency key.
--
-- A retried business operation (a client retry, an at-least-once job) must not enqueue a
-- second event. enqueue(topic, key, payload, headers, idempotency_key) derives the event's
-- id from the key (outbox.event_id_for): the same key always gives the same outbox-event-id,
-- and the existing UNIQUE index on event_id keeps one row per key. A second call finds the
-- key taken and returns that id without inserting.
--
-- What it may wait for (README, "Writing an outbox row", no wait and no serialization
-- failure): only another transaction that enqueued the SAME key and has not ended yet. The
-- answer depends on that one's outcome (it may still roll back), so nothing could answer
-- sooner; no other key, transaction or service is ever waited for, and a key never taken
-- before is a plain insert as in 0001. No serialization failure at any isolation level:
-- READ COMMITTED uses ON CONFLICT DO NOTHING; REPEATABLE READ and SERIALIZABLE catch the
-- unique violation in a subtransaction, because ON CONFLICT there raises 40001 when the
-- other row was committed after the caller's snapshot. The caller needs not see the row: its
-- id is known from the key.
--
-- The key is kept as long as its row: retention deletes published rows, and a retry after
-- that inserts the event again, with the same outbox-event-id, which the consumers' inbox
-- deduplicates.

-- A key that is a uuid in its canonical text form is the event id itself (the caller's own
-- event id); any other key maps to a name-based uuid (version 3, md5) in a namespace of its
-- own, never equal to a random (version 4) one.
CREATE OR REPLACE FUNCTION outbox.event_id_for(idempotency_key text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h text;
BEGIN
    IF idempotency_key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN idempotency_key::uuid;
    END IF;
    h := md5('outbox-relay idempotency key:' || idempotency_key);
    RETURN (substr(h, 1, 12) || '3' || substr(h, 14, 3)
            || to_hex(((('x' || substr(h, 17, 1))::bit(4)::integer) & 3) | 8)
            || substr(h, 18))::uuid;
END $$;

CREATE OR REPLACE FUNCTION outbox.enqueue(topic text, key text, payload bytea, headers jsonb,
                                          idempotency_key text)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted uuid;
    hit text;
BEGIN
    IF enqueue.idempotency_key IS NULL THEN
        RETURN outbox.enqueue(enqueue.topic, enqueue.key, enqueue.payload, enqueue.headers);
    END IF;
    IF topic IS NULL OR topic = '' THEN
        RAISE EXCEPTION 'outbox topic must not be empty' USING ERRCODE = '22023';
    END IF;
    PERFORM outbox.validate_headers(headers);
    wanted := outbox.event_id_for(enqueue.idempotency_key);
    IF current_setting('transaction_isolation') = 'read committed' THEN
        INSERT INTO outbox.events (event_id, topic, key, payload, headers)
        VALUES (wanted, enqueue.topic, enqueue.key, enqueue.payload,
                COALESCE(enqueue.headers, '{}'::jsonb))
        ON CONFLICT (event_id) DO NOTHING;
        IF FOUND THEN
            PERFORM outbox.hint_relay();
        END IF;
        RETURN wanted;
    END IF;
    BEGIN
        INSERT INTO outbox.events (event_id, topic, key, payload, headers)
        VALUES (wanted, enqueue.topic, enqueue.key, enqueue.payload,
                COALESCE(enqueue.headers, '{}'::jsonb));
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS hit = CONSTRAINT_NAME;
        IF hit IS DISTINCT FROM 'events_event_id_key' THEN
            RAISE;
        END IF;
        RETURN wanted;
    END;
    PERFORM outbox.hint_relay();
    RETURN wanted;
END $$;

-- The same for a JSON payload, stored as its UTF-8 text.
CREATE OR REPLACE FUNCTION outbox.enqueue(topic text, key text, payload jsonb, headers jsonb,
                                          idempotency_key text)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT outbox.enqueue(topic, key, convert_to(payload::text, 'UTF8'), headers, idempotency_key);
$$;

REVOKE ALL ON FUNCTION outbox.event_id_for(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.enqueue(text, text, bytea, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.enqueue(text, text, jsonb, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.event_id_for(text) TO outbox_writer;
GRANT EXECUTE ON FUNCTION outbox.enqueue(text, text, bytea, jsonb, text) TO outbox_writer;
GRANT EXECUTE ON FUNCTION outbox.enqueue(text, text, jsonb, jsonb, text) TO outbox_writer;
