-- outbox-relay: no transaction
-- 0005: an index for retention (`retention:` in the relay's configuration), which deletes
-- published rows oldest first: without it every batch would scan the table for old rows.
--
-- Built CONCURRENTLY so that services' enqueue (inserts) and the relay's marks (updates)
-- go on while it builds; that cannot run inside a transaction, hence the first line, which
-- tells `outbox-relay migrate` to run this file on its own, outside a transaction (one
-- statement only). An interrupted build leaves an invalid index behind: migrate drops
-- invalid indexes of schema outbox (DROP INDEX CONCURRENTLY) before running this file
-- again. By hand: `psql -v ON_ERROR_STOP=1 -f` without -1.
--
-- Cost: a mark now also inserts into this index (marks were not HOT updates before either:
-- published_at is in events_pending_idx's predicate).
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_published_at_idx ON outbox.events (published_at)
    WHERE published_at IS NOT NULL;
