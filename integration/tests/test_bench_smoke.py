"""The benchmark's smoke profile (integration/bench/bench.py --smoke) on the session's servers,
so the bench cannot rot: both source modes drain 2,000 rows and carry 200 events/s for 5 s,
and the JSON it writes must hold consistent figures and a clean audit. No timing thresholds:
the figures depend on the machine. About 25 s."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


def test_bench_smoke(pg, kafka, relay_bin, tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, OUTBOX_RELAY_BIN=str(relay_bin))
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--servers", f"{pg.dir},{kafka.dir}", "--json", str(out)],
        capture_output=True, text=True, timeout=240, env=env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    report = json.loads(out.read_text())
    assert report["ok"] is True, log
    assert report["params"]["rows"] == 2000 and report["params"]["rates"] == [200]
    for mode in ("polling", "replication"):
        res = report["readers"][mode]
        assert "error" not in res, (mode, res)
        d = res["drain"]
        assert d["rows"] == 2000 and d["messages_extra"] == 0 and d["message_problems"] == [], (mode, d)
        assert d["sample_headers"] == ["outbox-event-id", "outbox-id"], (mode, d)
        assert 0 < d["seconds_to_first"] <= d["seconds_to_last_in_kafka"] <= d["seconds_to_all_marked"], (mode, d)
        assert math.isclose(d["events_per_s"], 2000 / d["seconds_to_all_marked"], rel_tol=1e-6), (mode, d)
        assert d["cpu_s"] >= 0 and d["settle_s"] >= 0, (mode, d)
        # PostgreSQL's CPU by process kind: every part, adding up to the total
        parts = d["pg_cpu_s_per_100k_by_kind"]
        assert set(parts) == {"client", "walsender", "autovacuum", "exited", "writers", "other"}, (mode, d)
        assert all(v >= 0 for v in parts.values()), (mode, parts)
        assert math.isclose(sum(parts.values()), d["pg_cpu_s_per_100k"], rel_tol=1e-9, abs_tol=1e-9), (mode, d)
        s = res["steady"]["200"]
        # 200/s for 5 s: the writers stop after at most duration + 5 s, whatever they wrote
        assert 0 < s["written"] <= 1000 and s["delivered"] == s["written"], (mode, s)
        assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"], (mode, s)
        assert res["peak_rss_mb"] > 1, (mode, res)
        a = res["audit"]
        assert a["exit_code"] == 0 and a["lost"] == 0 and a["order_violations"] == 0, (mode, a)
        # every row the bench wrote: the backlog, the steady phase, warm-up and marker rows
        assert a["rows"] == a["published"] >= 2000 + s["written"] + 2, (mode, a)
        assert a["pending"] == 0 and a["messages"] >= a["rows"], (mode, a)
    # the bench printed the side-by-side table
    assert "catch-up drain of 2,000 rows" in r.stdout and "audit: lost" in r.stdout, log
    assert "    walsender" in r.stdout, log


def test_bench_pg_set_refusals(tmp_path):
    """--pg-set sets up the server the bench starts: with --servers it is refused, saying
    what to do instead, before anything runs. A malformed KEY=VALUE is refused too."""
    for extra, says in ((["--servers", f"{tmp_path},{tmp_path}"], "Leave out --servers"),
                        ([], "is not KEY=VALUE")):
        setting = "max_wal_size=4GB" if extra else "max_wal_size"
        r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--pg-set", setting, *extra,
                            "--json", str(tmp_path / "bench.json")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--pg-set" in r.stderr and says in r.stderr, r.stderr
        assert not (tmp_path / "bench.json").exists()
