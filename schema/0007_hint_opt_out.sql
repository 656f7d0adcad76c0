-- 0007: a service can turn the wake-up NOTIFY off for its own transactions.
--
-- PostgreSQL refuses PREPARE TRANSACTION in a transaction that ran NOTIFY ("cannot PREPARE a
-- transaction that has executed LISTEN, UNLISTEN, or NOTIFY"). A service using two-phase
-- commit (XA/JTA) failed whenever its enqueue was the first after the relay re-armed the hint.
-- With the setting outbox.notify = 'off' (for example ALTER ROLE orders_service SET
-- outbox.notify = 'off', or SET LOCAL before the enqueue), hint_relay() neither sends the
-- NOTIFY nor takes the armed value of the sequence, so the hint stays armed for the other
-- writers; that service's rows are found by the relay's polling interval
-- (source.polling.interval_ms) or by the next hinted write, never lost.
CREATE OR REPLACE FUNCTION outbox.hint_relay() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('outbox.notify', true) IS NOT DISTINCT FROM 'off' THEN
        RETURN;
    END IF;
    IF nextval('outbox.relay_wakeup_seq') = 1 THEN
        PERFORM pg_notify('outbox_events', '');
    END IF;
END $$;
REVOKE ALL ON FUNCTION outbox.hint_relay() FROM PUBLIC;
