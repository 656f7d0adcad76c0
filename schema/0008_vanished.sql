-- 0008: rows that were gone when the relay recorded their outcome.
--
-- A row may disappear between Kafka's acknowledgement of its message and its mark: deleted
-- by hand, or the database went back in time (a failover to an asynchronous replica that
-- lacked the last commits, a point-in-time restore, synchronous_commit = off and a crash).
-- The id may even name another event now (the id sequence rewound with the rest). Nothing
-- more can come of such a row, so the relay records the rest of the outcome and goes on; it
-- writes each gone row here, in the same transaction as the rest of the mark, so that
-- `outbox-relay audit` can list them (their messages are in Kafka without a row). The relay
-- only inserts; clear the table by hand once the rows are accounted for.
CREATE TABLE IF NOT EXISTS outbox.vanished (
    -- The row's id and event as the relay read them (event_id NULL only if it was unknown).
    id           bigint      NOT NULL,
    event_id     uuid,
    -- Its row topic (before the relay's kafka.topic_map).
    topic        text,
    -- Kafka acknowledged its message (true), or a failed delivery was to be recorded (false).
    acknowledged boolean     NOT NULL,
    -- The event that has this id now, when the id was used again (it stays pending).
    reused_by    uuid,
    noticed_at   timestamptz NOT NULL DEFAULT now(),
    -- A mark recorded again (its commit's acknowledgement lost) adds nothing.
    UNIQUE (id, event_id)
);

GRANT SELECT, INSERT ON outbox.vanished TO outbox_relay;
