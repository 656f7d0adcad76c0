"""Memory is bounded in bytes, not only in rows: large payloads with default settings.

Before source.polling.batch_max_bytes, 400 rows of 900 kB made the relay peak at over 1 GB
(a batch of up to 1000 rows, each payload held about three times)."""

from __future__ import annotations

import os

import pytest

from harness import audit, enqueue
from harness.checks import assert_no_loss, explain

ROWS, SIZE = 200, 900_000  # 180 MB of payload pending at start
BOUND_MB = 150  # docs/design/how-it-works.md, memory-bounded: about 5 x batch_max_bytes (16 MiB) + the relay's own ~20 MB


@pytest.fixture(params=["polling", "replication"])
def mode(request):
    return request.param


def test_large_payloads_stay_within_the_byte_budget(ctx):
    topic = ctx.topic(partitions=3)
    relay = ctx.relay({"kafka": {"properties": {"message.max.bytes": "1000000"}}})
    if ctx.mode == "replication":
        relay.start()
        ctx.wait_streaming(relay)
    with ctx.connect() as c:
        for i in range(ROWS):
            enqueue(c, topic, f"k{i % 7}", os.urandom(16) + bytes(SIZE - 16))
    if ctx.mode == "polling":
        relay.start()
    ctx.wait_all_published(ROWS, 180, relay)
    peak_mb = relay.proc_status_kb("VmHWM") / 1024
    records = ctx.kafka.consume_all(topic, ROWS, timeout_s=120)
    rep = audit(ctx.rows(), records)
    assert rep.records == ROWS, explain(rep, relay)
    assert_no_loss(rep, relay, allow_duplicates=False)
    ctx.note(f"{ROWS} rows of {SIZE} bytes: relay peak RSS {peak_mb:.0f} MB")
    assert peak_mb < BOUND_MB, f"peak RSS {peak_mb:.0f} MB for {ROWS} rows of {SIZE} bytes"
