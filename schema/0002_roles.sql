-- 0002: least-privilege roles. Both are NOLOGIN groups: grant them to the login roles
-- you create for the relay and for each service, e.g.
--   CREATE ROLE relay LOGIN PASSWORD '...' IN ROLE outbox_relay;
--   GRANT outbox_writer TO orders_service;
-- `migrate` makes the two roles before this file runs, when they do not exist (only then does
-- it need CREATEROLE), and runs it with the names postgres.relay_role and
-- postgres.writer_role give them (outbox_relay and outbox_writer by default).

REVOKE ALL ON SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA outbox FROM PUBLIC;
GRANT USAGE ON SCHEMA outbox TO outbox_relay, outbox_writer;

-- Services: only enqueue (SECURITY DEFINER), never the table itself.
GRANT EXECUTE ON FUNCTION outbox.enqueue(text, text, bytea, jsonb) TO outbox_writer;
GRANT EXECUTE ON FUNCTION outbox.enqueue(text, text, jsonb, jsonb) TO outbox_writer;

-- The relay: read the rows, record the outcome columns, clear the hint. No INSERT, no DELETE.
GRANT SELECT ON outbox.events TO outbox_relay;
GRANT UPDATE (published_at, attempts, last_error, dead_lettered_at) ON outbox.events TO outbox_relay;
GRANT SELECT, UPDATE ON outbox.relay_wakeup TO outbox_relay;
GRANT SELECT ON outbox.schema_migrations TO outbox_relay;
