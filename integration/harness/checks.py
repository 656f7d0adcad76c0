"""Assertions shared by the end-to-end test modules (on an AuditReport)."""

from __future__ import annotations

from .audit import AuditReport, audit
from .replication import lsn_text
from .workload import setup_keys

KEYS_100 = [f"key-{i:03d}" for i in range(100)]


def start_load(ctx, total: int, keys=KEYS_100, threads: int = 4, **kw):
    """A topic and (not yet started) service-like Writers of `total` events over
    `keys`; in replication mode they record the LSNs of their commits."""
    topic = ctx.topic()
    with ctx.connect(autocommit=False) as c:
        setup_keys(c, keys)
    kw.setdefault("track_lsn", ctx.mode == "replication")
    return topic, ctx.writers(topic, keys, total, threads=threads, **kw)


def explain(report: AuditReport, relay=None, extra: str = "") -> str:
    msg = report.summary() + "\n" + "\n".join(report.problems(allow_duplicates=True))
    if extra:
        msg += "\n" + extra
    if relay is not None:
        msg += f"\nrelay log ({relay.log_path}) tail:\n{relay.log_tail(30)}"
    return msg


def assert_no_loss(rep: AuditReport, relay, allow_duplicates: bool) -> None:
    """Nothing lost, every row marked, headers and contents right, per-key order
    kept (for at-least-once runs: order of first deliveries)."""
    assert not rep.lost, "events lost: " + explain(rep, relay)
    assert not rep.unmarked, "rows not marked published: " + explain(rep, relay)
    assert not rep.missing_headers, "headers missing: " + explain(rep, relay)
    assert not rep.mismatches, "records differ from their rows: " + explain(rep, relay)
    assert not rep.unknown, "records that match no row: " + explain(rep, relay)
    assert not rep.keys_split, "a key on several partitions: " + explain(rep, relay)
    if allow_duplicates:
        assert not rep.order_violations_first_seen, "per-key order (first deliveries): " + explain(rep, relay)
    else:
        assert not rep.duplicates, "duplicates: " + explain(rep, relay)
        assert not rep.order_violations, "per-key order: " + explain(rep, relay)


def assert_delivered(ctx, topic: str, total: int, relay, allow_duplicates: bool, timeout_s: float = 90.0) -> AuditReport:
    """Reads the `total` records of `topic` and audits them against outbox.events: `total`
    rows, nothing lost (assert_no_loss); without duplicates allowed, exactly `total` records."""
    records = ctx.kafka.consume_all(topic, total, timeout_s=timeout_s)
    rep = audit(ctx.rows(), records)
    assert rep.rows == total
    if not allow_duplicates:
        assert rep.records == total, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=allow_duplicates)
    return rep


def marked_event_ids(ctx) -> set[str]:
    return {r[0] for r in ctx._query("SELECT event_id::text FROM outbox.events WHERE published_at IS NOT NULL")}


def check_confirm_invariant(ctx, writers, what: str) -> int:
    """The slot never confirmed past a transaction with an unmarked row. The
    confirmed position is read BEFORE the marks: a mark seen missing afterwards
    was missing when the position was confirmed. Returns confirmed_flush_lsn."""
    s = ctx.slot()
    assert s is not None, f"slot {ctx.slot_name} vanished ({what})"
    confirmed = s.confirmed_flush_lsn or 0
    marked = marked_event_ids(ctx)
    with writers._lock:
        txns = list(writers.txn_lsns)
    for ids, _pre, post in txns:
        if post is not None and post <= confirmed:
            missing = [e for e in ids if e not in marked]
            assert not missing, (
                f"{what}: slot confirmed at {lsn_text(confirmed)}, past the commit of a transaction "
                f"(ends by {lsn_text(post)}) whose events {missing} are not marked published; {s.describe()}"
            )
    return confirmed
