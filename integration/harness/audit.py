"""Compares the outbox rows with what arrived in Kafka.

Reports: lost events (row without a Kafka record), duplicates (an
outbox-event-id seen more than once), per-key order violations (per key, the
outbox-id headers must increase), missing or wrong headers, records that match
no row, keys spread over several partitions, and rows not marked published.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from typing import Iterable, Optional, Sequence

from .servers import Record

EVENT_ID = "outbox-event-id"
OUTBOX_ID = "outbox-id"


@dataclasses.dataclass
class OutboxRow:
    id: int
    event_id: str
    key: Optional[str]
    topic: str
    payload: Optional[bytes] = None  # checked when not None
    headers: Optional[dict] = None  # the row's own headers; checked when not None
    published: Optional[bool] = None  # published_at IS NOT NULL; checked when not None
    dead_lettered: Optional[bool] = None


def fetch_rows(conn, topic: Optional[str] = None, with_payload: bool = True) -> list[OutboxRow]:
    """All rows of outbox.events (optionally of one topic), in id order."""
    sql = (
        "SELECT id, event_id::text, key, topic, {payload}, headers, published_at IS NOT NULL,"
        " dead_lettered_at IS NOT NULL FROM outbox.events {where} ORDER BY id"
    ).format(payload="payload" if with_payload else "NULL", where="WHERE topic = %s" if topic else "")
    rows = conn.execute(sql, (topic,) if topic else ()).fetchall()
    out = []
    for r in rows:
        h = r[5]
        if isinstance(h, str):
            h = json.loads(h)
        out.append(
            OutboxRow(
                id=r[0],
                event_id=r[1],
                key=r[2],
                topic=r[3],
                payload=bytes(r[4]) if r[4] is not None else (None if not with_payload else b""),
                headers=h,
                published=r[6],
                dead_lettered=r[7],
            )
        )
    return out


@dataclasses.dataclass
class AuditReport:
    rows: int
    records: int
    lost: list  # OutboxRow
    duplicates: dict  # event_id -> times seen (only those > 1)
    order_violations: list  # (key, previous outbox-id, outbox-id), raw delivery sequence
    order_violations_first_seen: list  # same, ignoring re-deliveries of already seen events
    missing_headers: list  # (Record, description)
    mismatches: list  # (Record, description): key/topic/payload/outbox-id differ from the row
    unknown: list  # Record whose outbox-event-id matches no row
    keys_split: dict  # key -> sorted partitions, when more than one
    unmarked: list  # OutboxRow not published
    unmarked_delivered: list  # OutboxRow not published although its event is in Kafka

    @property
    def duplicate_count(self) -> int:
        """Extra copies: records minus distinct events."""
        return sum(n - 1 for n in self.duplicates.values())

    def problems(self, allow_duplicates: bool = False, require_marked: bool = True) -> list[str]:
        p = []
        if self.lost:
            p.append(f"{len(self.lost)} lost (e.g. ids {[r.id for r in self.lost[:10]]})")
        if self.duplicates and not allow_duplicates:
            p.append(f"{self.duplicate_count} duplicates of {len(self.duplicates)} events")
        ov = self.order_violations_first_seen if allow_duplicates else self.order_violations
        if ov:
            p.append(f"{len(ov)} per-key order violations (key, prev outbox-id, outbox-id): {ov[:10]}")
        if self.missing_headers:
            p.append(
                f"{len(self.missing_headers)} records with missing headers, e.g. "
                + "; ".join(f"{r.topic}/{r.partition}@{r.offset}: {d}" for r, d in self.missing_headers[:5])
            )
        if self.mismatches:
            p.append(
                f"{len(self.mismatches)} records differing from their row, e.g. "
                + "; ".join(f"{r.topic}/{r.partition}@{r.offset}: {d}" for r, d in self.mismatches[:5])
            )
        if self.unknown:
            p.append(f"{len(self.unknown)} records matching no outbox row")
        if self.keys_split:
            p.append(f"{len(self.keys_split)} keys on several partitions: {dict(list(self.keys_split.items())[:5])}")
        if require_marked and self.unmarked:
            p.append(f"{len(self.unmarked)} rows not marked published (e.g. ids {[r.id for r in self.unmarked[:10]]})")
        return p

    def ok(self, allow_duplicates: bool = False, require_marked: bool = True) -> bool:
        return not self.problems(allow_duplicates, require_marked)

    def summary(self) -> str:
        return (
            f"rows={self.rows} records={self.records} lost={len(self.lost)} "
            f"duplicated={self.duplicate_count} order_violations={len(self.order_violations)} "
            f"(first-seen {len(self.order_violations_first_seen)}) missing_headers={len(self.missing_headers)} "
            f"mismatches={len(self.mismatches)} unknown={len(self.unknown)} unmarked={len(self.unmarked)}"
        )


def _increasing_violations(seq: Sequence[int], key) -> list:
    out = []
    prev = None
    for x in seq:
        if prev is not None and x <= prev:
            out.append((key, prev, x))
        prev = x if prev is None else max(prev, x)
    return out


def audit(rows: Iterable[OutboxRow], records: Iterable[Record]) -> AuditReport:
    rows = list(rows)
    records = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    by_event = {r.event_id: r for r in rows}
    seen = Counter()
    missing_headers, mismatches, unknown = [], [], []
    per_key: dict = defaultdict(list)  # (topic, key) -> [(partition, offset, outbox_id)]

    for rec in records:
        eid = rec.headers.get(EVENT_ID)
        oid_text = rec.headers.get(OUTBOX_ID)
        if eid is None:
            missing_headers.append((rec, f"no {EVENT_ID} header"))
        if oid_text is None:
            missing_headers.append((rec, f"no {OUTBOX_ID} header"))
        elif rec.outbox_id is None:
            missing_headers.append((rec, f"{OUTBOX_ID} is not a decimal: {oid_text!r}"))
        if eid is None:
            continue
        seen[eid] += 1
        row = by_event.get(eid)
        if row is None:
            unknown.append(rec)
            continue
        if rec.outbox_id is not None and rec.outbox_id != row.id:
            mismatches.append((rec, f"{OUTBOX_ID} {rec.outbox_id} but row id {row.id}"))
        if rec.key != row.key:
            mismatches.append((rec, f"key {rec.key!r} but row key {row.key!r}"))
        if rec.topic != row.topic:
            mismatches.append((rec, f"topic {rec.topic!r} but row topic {row.topic!r}"))
        if row.payload is not None and (rec.value or b"") != row.payload:
            mismatches.append((rec, f"payload differs ({len(rec.value or b'')} vs {len(row.payload)} bytes)"))
        if row.headers:
            for hk, hv in row.headers.items():
                if hk not in rec.headers:
                    missing_headers.append((rec, f"row header {hk!r} missing"))
                elif rec.headers[hk] != hv:
                    mismatches.append((rec, f"header {hk!r}={rec.headers[hk]!r} but row has {hv!r}"))
        per_key[(rec.topic, rec.key)].append((rec.partition, rec.offset, row.id))

    lost = [r for r in rows if r.event_id not in seen]
    duplicates = {e: n for e, n in seen.items() if n > 1}

    order, order_first, keys_split = [], [], {}
    for (topic, key), deliveries in per_key.items():
        if key is None:
            continue  # no ordering promise without a key
        parts = sorted({p for p, _, _ in deliveries})
        if len(parts) > 1:
            keys_split[key] = parts
        deliveries.sort()  # by partition, offset: delivery order within each partition
        for part in parts:  # (a key split over partitions is reported above)
            seq = [oid for p, _, oid in deliveries if p == part]
            order += _increasing_violations(seq, key)
            first, s = [], set()
            for oid in seq:
                if oid not in s:
                    s.add(oid)
                    first.append(oid)
            order_first += _increasing_violations(first, key)

    unmarked = [r for r in rows if r.published is False and not r.dead_lettered]
    unmarked_delivered = [r for r in unmarked if r.event_id in seen]
    return AuditReport(
        rows=len(rows),
        records=len(records),
        lost=lost,
        duplicates=duplicates,
        order_violations=order,
        order_violations_first_seen=order_first,
        missing_headers=missing_headers,
        mismatches=mismatches,
        unknown=unknown,
        keys_split=keys_split,
        unmarked=unmarked,
        unmarked_delivered=unmarked_delivered,
    )
