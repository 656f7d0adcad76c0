"""Marking rows published: a mark that fails the same way every time (a trigger, a revoked
grant, statement_timeout) used to loop publish, fail, publish, each loop a full batch of
duplicates. The relay now keeps the outcome and retries only the mark."""

from __future__ import annotations

import pytest

from harness import audit, enqueue, wait_until
from harness.checks import assert_no_loss, explain


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


def test_a_mark_that_keeps_failing_sends_nothing_twice(ctx):
    topic = ctx.topic()
    total = 60
    with ctx.connect() as c:
        c.execute("CREATE FUNCTION public.refuse_marks() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE EXCEPTION 'marks refused by a trigger'; END $$")
        c.execute("CREATE TRIGGER refuse_marks BEFORE UPDATE ON outbox.events "
                  "FOR EACH ROW EXECUTE FUNCTION public.refuse_marks()")
    relay = ctx.relay({"relay": {"backoff_initial_ms": 20, "backoff_max_ms": 100}}).start()
    with ctx.connect() as c:
        for i in range(total):
            enqueue(c, topic, f"k{i % 6}", str(i).encode())
    failures = lambda: relay.log_text().count("marks refused by a trigger")  # noqa: E731
    wait_until(lambda: failures() >= 8, 60, 0.05, "the mark failing again and again")
    assert ctx.marked() == 0
    with ctx.connect() as c:
        c.execute("DROP TRIGGER refuse_marks ON outbox.events")
    ctx.wait_all_published(total, 60, relay)
    records = ctx.kafka.consume_all(topic, total, timeout_s=60)
    rep = audit(ctx.rows(), records)
    assert rep.records == total, f"{rep.records} records for {total} rows after {failures()} " \
        "failed marks: a batch was sent again for each\n" + explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    relay.assert_running()
    ctx.note(f"{failures()} failed marks, {rep.records} records for {total} rows")
