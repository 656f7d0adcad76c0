-- 0001: the outbox table, the enqueue function services call, and the relay's wake-up hint.
-- Applied by `outbox-relay migrate` (recorded in outbox.schema_migrations) or by hand with
-- `psql -v ON_ERROR_STOP=1 -1 -f`. Every statement is idempotent, so a re-run changes nothing.

CREATE SCHEMA IF NOT EXISTS outbox;

-- What has been applied (outbox-relay migrate fills it; by hand, insert the row yourself).
CREATE TABLE IF NOT EXISTS outbox.schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS outbox.events (
    -- Commit-independent order of the rows; the relay publishes pending rows in this order.
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The consumers' deduplication key, sent as the Kafka header outbox-event-id.
    event_id         uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    topic            text        NOT NULL CHECK (topic <> ''),
    -- Kafka message key (the aggregate id): one key stays on one partition, in order.
    key              text,
    payload          bytea,
    -- A JSON object whose values are strings: extra Kafka headers.
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Set by the relay only after Kafka acknowledged the message (acks=all).
    published_at     timestamptz,
    -- Delivery attempts that failed for this row, and the last reason.
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    -- Set when the row can never be published (too large, invalid topic or headers):
    -- the row stays here with its reason and no longer holds up the others.
    dead_lettered_at timestamptz
);

-- What the relay reads: pending rows in id order. Small, because published rows leave it.
CREATE INDEX IF NOT EXISTS events_pending_idx ON outbox.events (id)
    WHERE published_at IS NULL AND dead_lettered_at IS NULL;
CREATE INDEX IF NOT EXISTS events_dead_lettered_idx ON outbox.events (id)
    WHERE dead_lettered_at IS NOT NULL;

-- The wake-up hint. A NOTIFY takes a database-wide lock at commit and so serialises the
-- committing transactions that sent one; to keep that off the services' hot path, only the
-- first writer after the relay went to sleep sends it. Nobody ever waits on this row: a
-- writer that finds it locked skips it (the holder notifies when it commits), and so does
-- the relay when it re-arms, so neither a long service transaction nor lock order between
-- services can block or deadlock on it. The relay's polling interval covers a holder that
-- rolls back.
CREATE TABLE IF NOT EXISTS outbox.relay_wakeup (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    armed     boolean NOT NULL DEFAULT true
);
INSERT INTO outbox.relay_wakeup (singleton, armed) VALUES (true, true) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION outbox.hint_relay() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A plain read first: writers that find the hint already sent take no lock at all.
    IF (SELECT armed FROM outbox.relay_wakeup WHERE singleton) THEN
        PERFORM 1 FROM outbox.relay_wakeup WHERE singleton AND armed FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE outbox.relay_wakeup SET armed = false WHERE singleton;
            PERFORM pg_notify('outbox_events', '');
        END IF;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION outbox.validate_headers(headers jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad text;
BEGIN
    IF headers IS NULL THEN
        RETURN;
    END IF;
    IF jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'outbox headers must be a JSON object of strings, got %', jsonb_typeof(headers)
            USING ERRCODE = '22023';
    END IF;
    SELECT k INTO bad FROM jsonb_each(headers) AS e(k, v) WHERE jsonb_typeof(v) <> 'string' LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'outbox header "%" must be a string', bad USING ERRCODE = '22023';
    END IF;
    IF headers ? 'outbox-event-id' OR headers ? 'outbox-id' THEN
        RAISE EXCEPTION 'outbox headers outbox-event-id and outbox-id are set by the relay'
            USING ERRCODE = '22023';
    END IF;
END $$;

-- What services call inside their own transaction, beside their business writes.
CREATE OR REPLACE FUNCTION outbox.enqueue(topic text, key text, payload bytea,
                                          headers jsonb DEFAULT '{}'::jsonb)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    IF topic IS NULL OR topic = '' THEN
        RAISE EXCEPTION 'outbox topic must not be empty' USING ERRCODE = '22023';
    END IF;
    PERFORM outbox.validate_headers(headers);
    INSERT INTO outbox.events (topic, key, payload, headers)
    VALUES (enqueue.topic, enqueue.key, enqueue.payload, COALESCE(enqueue.headers, '{}'::jsonb))
    RETURNING event_id INTO new_id;
    PERFORM outbox.hint_relay();
    RETURN new_id;
END $$;

-- The same for a JSON payload, stored as its UTF-8 text.
CREATE OR REPLACE FUNCTION outbox.enqueue(topic text, key text, payload jsonb,
                                          headers jsonb DEFAULT '{}'::jsonb)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT outbox.enqueue(topic, key, convert_to(payload::text, 'UTF8'), headers);
$$;
