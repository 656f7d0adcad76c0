"""The audit must see what it is meant to see (no servers needed)."""

from harness import OutboxRow, Record, audit
from harness.relay import to_yaml


def rec(row: OutboxRow, partition: int, offset: int, **over) -> Record:
    headers = {"outbox-event-id": row.event_id, "outbox-id": str(row.id), **(row.headers or {})}
    headers.update(over.pop("headers", {}))
    for h in over.pop("drop", ()):
        headers.pop(h)
    fields = dict(topic=row.topic, partition=partition, offset=offset, key=row.key, value=row.payload, headers=headers)
    fields.update(over)
    return Record(**fields)


ROWS = [
    OutboxRow(id=i, event_id=f"e{i}", key=f"k{i % 2}", topic="t", payload=b"p%d" % i, headers={"type": "X"}, published=True)
    for i in range(1, 7)
]


def test_clean_run():
    recs = [rec(r, r.id % 2, r.id) for r in ROWS]
    rep = audit(ROWS, recs)
    assert rep.ok(), rep.problems()


def test_lost_duplicated_unmarked():
    rows = [*ROWS[:-1], OutboxRow(**{**ROWS[-1].__dict__, "published": False})]
    recs = [rec(r, r.id % 2, r.id) for r in rows[1:]] + [rec(rows[2], 1, 100)]
    rep = audit(rows, recs)
    assert [r.id for r in rep.lost] == [1]
    assert rep.duplicates == {"e3": 2} and rep.duplicate_count == 1
    assert [r.id for r in rep.unmarked] == [6] and [r.id for r in rep.unmarked_delivered] == [6]
    # redelivery of e3 after e5 breaks the raw order but not the first-seen order
    assert rep.order_violations and not rep.order_violations_first_seen
    assert not rep.ok() and not rep.ok(allow_duplicates=True)


def test_order_headers_contents():
    r1, r3 = ROWS[0], ROWS[2]  # both key k1
    recs = [
        rec(r3, 1, 0),
        rec(r1, 1, 1, drop=["type"]),
        rec(ROWS[1], 0, 0, drop=["outbox-id"]),
        rec(ROWS[3], 0, 1, value=b"other"),
        rec(ROWS[4], 0, 2),  # k1 on a second partition
        rec(ROWS[5], 0, 3, headers={"outbox-event-id": "nope"}),
    ]
    rep = audit(ROWS, recs)
    assert rep.order_violations == [("k1", 3, 1)]
    assert {d for _, d in rep.missing_headers} == {"row header 'type' missing", "no outbox-id header"}
    assert [d for _, d in rep.mismatches] == ["payload differs (5 vs 2 bytes)"]
    assert len(rep.unknown) == 1
    assert rep.keys_split == {"k1": [0, 1]}


def test_yaml_writer():
    text = to_yaml({"postgres": {"dsn": 'host=x "q"'}, "kafka": {"properties": {"linger.ms": "5"}}, "n": 5})
    assert text == 'postgres:\n  dsn: "host=x \\"q\\""\nkafka:\n  properties:\n    linger.ms: "5"\nn: 5'
