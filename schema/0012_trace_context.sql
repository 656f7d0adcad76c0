-- 0012: W3C trace context from the service's transaction to the Kafka headers.
--
-- A service traced with OpenTelemetry (or any W3C Trace Context propagator) hands its
-- context on with the event in one of two ways, and the relay sends it as Kafka headers
-- `traceparent` and `tracestate`, byte for byte (the row's headers are the message's):
--
--   1. in the headers argument of enqueue: {"traceparent": "00-...-01", "tracestate": "..."}
--      (what a propagator's inject() into a map gives; nothing else to do), or
--   2. with settings of the transaction, before the enqueue (or an INSERT into outbox.events):
--        SET LOCAL outbox.traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
--        SET LOCAL outbox.tracestate = 'congo=t61rcWkgMzE';
--      (or set_config('outbox.traceparent', $1, true)): one statement at the start of a
--      traced transaction covers every event it enqueues, and SET LOCAL ends with the
--      transaction, so a pooled connection (pgbouncer, transaction pooling) carries nothing
--      over to the next one.
--
-- A header given in the row wins over the settings: the trigger adds traceparent only when
-- the row has none, and tracestate only with it (a tracestate belongs to its traceparent).
-- Values pass through untouched, even malformed: tracing must never fail the service's
-- business transaction, and the W3C rule for a malformed traceparent (start a new trace) is
-- the consumer's propagator's to apply. An empty setting (what current_setting returns after
-- a SET LOCAL of an earlier transaction ended) is no context.
--
-- A trigger, not a new enqueue: it composes with every version of enqueue (and with services
-- that insert rows themselves), and its WHEN clause keeps it from running at all in a
-- transaction that set no context, so untraced writes cost what they did.
CREATE OR REPLACE FUNCTION outbox.add_trace_context() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    parent text := current_setting('outbox.traceparent', true);
    state text := current_setting('outbox.tracestate', true);
BEGIN
    IF coalesce(parent, '') = '' OR NEW.headers ? 'traceparent' THEN
        RETURN NEW;
    END IF;
    NEW.headers := NEW.headers || jsonb_build_object('traceparent', parent);
    IF coalesce(state, '') <> '' AND NOT NEW.headers ? 'tracestate' THEN
        NEW.headers := NEW.headers || jsonb_build_object('tracestate', state);
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION outbox.add_trace_context() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'outbox.events'::regclass AND tgname = 'events_trace_context') THEN
        CREATE TRIGGER events_trace_context BEFORE INSERT ON outbox.events
            FOR EACH ROW
            WHEN (coalesce(current_setting('outbox.traceparent', true), '') <> '')
            EXECUTE FUNCTION outbox.add_trace_context();
    END IF;
END $$;
