-- The example services' own tables, one set for every language (the outbox and the inbox come
-- from schema/).
CREATE TABLE IF NOT EXISTS orders (
    id     bigint PRIMARY KEY,
    status text NOT NULL
);
CREATE TABLE IF NOT EXISTS order_projection (  -- the consumer's side: one row per applied event
    event_id uuid PRIMARY KEY,
    order_id bigint NOT NULL,
    status   text NOT NULL
);
