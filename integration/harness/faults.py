"""Fault-injection suite support (tests/test_faults.py): profiles, one measured run of a
scenario (writers, relay, fault, drain, both audits) and the results table.

Profiles (env OUTBOX_FAULTS_PROFILE): `short` (default, what CI runs: every scenario with
small counts) and `full` (a minute of relay kills, a 300,000-row transaction...). Seeds:
OUTBOX_FAULTS_SEED (default 1) makes the kill schedules and delays reproducible.

Each run prints one line (a Markdown table row) and adds it to the table printed at the end
of the pytest run (conftest.py) and, with OUTBOX_FAULTS_TABLE=FILE, written to FILE:
scenario, mode, events (rows in outbox.events), lost, duplicates (extra copies), order
violations (per key, a first delivery below an earlier one), drain (seconds from the end of
the fault to the last row marked published), the fault as run, and ok / FAILED with why.
Figures come from `outbox-relay audit --json`; the Python audit (harness/audit.py) reads the
same topic and must agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from .audit import audit
from .checks import KEYS_100, start_load
from .relay import Relay
from .wait import hold, wait_until

FAULTS_KEY = pytest.StashKey[list]()

# delivery.guarantee of the runs (tests/test_faults.py parametrises it): at_least_once, or
# exactly_once, where every scenario must end with duplicates = 0.
DELIVERY = "at_least_once"


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    writer_threads: int
    kill_loop_s: float  # 1. relay SIGKILL loop
    term_loop_s: float  # 1b. relay SIGTERM loop (clean restarts)
    kill_interval_s: tuple  # seconds between two kills / stops: uniform in this range
    kafka_outages: int  # 2. broker SIGKILLs
    kafka_outage_s: float
    pg_outages: int  # 3. PostgreSQL immediate shutdowns
    pg_outage_s: float
    net_slow_s: float  # 4. latency added for this long, then...
    net_cut_s: float  # ... the network cut for this long (PostgreSQL)
    net_kafka_cut_s: float  # (Kafka: the full profile outlasts librdkafka's 60 s request timeout)
    delay_ms: tuple  # latency per chunk and direction, uniform in this range
    leader_load_s: float  # 5. load before the leader is killed
    big_tx_rows: int  # 6. rows of the one big transaction
    crash_hit: int  # 7. the crash point fires at this hit
    test_timeout_s: int


PROFILES = {
    "short": Profile(
        name="short",
        writer_threads=2,
        kill_loop_s=7.0,
        term_loop_s=5.0,
        kill_interval_s=(2.0, 4.0),
        kafka_outages=1,
        kafka_outage_s=1.0,
        pg_outages=1,
        pg_outage_s=1.0,
        net_slow_s=2.0,
        net_cut_s=4.0,
        net_kafka_cut_s=4.0,
        delay_ms=(50.0, 200.0),
        leader_load_s=2.0,
        big_tx_rows=20_000,
        crash_hit=3,
        test_timeout_s=300,
    ),
    "full": Profile(
        name="full",
        writer_threads=4,
        kill_loop_s=60.0,
        term_loop_s=30.0,
        kill_interval_s=(2.0, 4.0),
        kafka_outages=3,
        kafka_outage_s=10.0,
        pg_outages=3,
        pg_outage_s=5.0,
        net_slow_s=20.0,
        net_cut_s=40.0,
        net_kafka_cut_s=70.0,
        delay_ms=(50.0, 200.0),
        leader_load_s=10.0,
        big_tx_rows=300_000,
        crash_hit=5,
        test_timeout_s=900,
    ),
}


def profile() -> Profile:
    name = os.environ.get("OUTBOX_FAULTS_PROFILE", "short")
    if name not in PROFILES:
        raise ValueError(f"OUTBOX_FAULTS_PROFILE={name!r}: must be one of {sorted(PROFILES)}")
    return PROFILES[name]


def rng_for(what: str) -> random.Random:
    return random.Random(f"{os.environ.get('OUTBOX_FAULTS_SEED', '1')}/{what}")


def crash_points_compiled(binary: Path) -> bool:
    """The binary was built with -DOUTBOX_CRASH_POINTS=ON (it reads the variable)."""
    try:
        return b"OUTBOX_RELAY_CRASH_AT" in Path(binary).read_bytes()
    except OSError:
        return False


# ----------------------------------------------------------------------- table
@dataclasses.dataclass
class FaultRow:
    scenario: str
    mode: str
    events: int
    lost: int
    duplicates: int
    order_violations: int
    drain_s: Optional[float]
    fault: str
    problems: list
    details: str = ""  # failure report: problems, audit summary, relay log tails

    HEADER = ("scenario", "mode", "events", "lost", "duplicates", "order violations", "drain (s)", "fault", "result")

    def cells(self) -> tuple:
        return (
            self.scenario,
            self.mode,
            f"{self.events:,}",
            str(self.lost),
            str(self.duplicates),
            str(self.order_violations),
            "-" if self.drain_s is None else f"{self.drain_s:.2f}",
            self.fault,
            "ok" if not self.problems else "FAILED: " + "; ".join(p.splitlines()[0] for p in self.problems),
        )

    def line(self) -> str:
        return "| " + " | ".join(self.cells()) + " |"


def table_lines(rows: list[FaultRow]) -> list[str]:
    head = "| " + " | ".join(FaultRow.HEADER) + " |"
    sep = "|" + "|".join("---" if i < 2 or i > 6 else "--:" for i in range(len(FaultRow.HEADER))) + "|"
    return [head, sep] + [r.line() for r in rows]


def record(request, row: FaultRow) -> None:
    """The run's line: printed, kept for the end-of-run table, appended to OUTBOX_FAULTS_TABLE."""
    request.config.stash.setdefault(FAULTS_KEY, []).append(row)
    print(row.line())
    out = os.environ.get("OUTBOX_FAULTS_TABLE")
    if out:
        p = Path(out)
        new = not p.exists() or p.stat().st_size == 0
        with open(p, "a") as f:
            if new:
                f.write("\n".join(table_lines([])) + "\n")
            f.write(row.line() + "\n")


# ------------------------------------------------------------------------ runs
def read_topic(kafka, topic: str, timeout_s: float = 300.0) -> list:
    """Every record of the topic up to the high watermarks read first (the relay has
    stopped: nothing more is coming), so no idle wait is needed to see duplicates."""
    from confluent_kafka import TopicPartition

    with kafka.reader(topic) as r:
        c = r._c
        parts = [TopicPartition(tp.topic, tp.partition) for tp in c.assignment()]
        high = {tp.partition: c.get_watermark_offsets(tp, timeout=30)[1] for tp in parts}
        deadline = time.monotonic() + timeout_s
        seen: dict = {}
        while True:
            for rec in r.poll(0.2):
                seen[rec.partition] = max(seen.get(rec.partition, -1), rec.offset)
            if all(seen.get(p, -1) >= h - 1 for p, h in high.items()):
                return list(r.records)
            # exactly_once: a partition ends with a transaction marker, never delivered; the
            # consumer's position moves past it
            pos = {tp.partition: tp.offset for tp in c.position(parts)}
            if all(max(seen.get(p, -1) + 1, pos.get(p, -1)) >= h for p, h in high.items()):
                return list(r.records)
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic}: read up to {seen}, high watermarks {high}")


def last_mark_epoch(ctx) -> Optional[float]:
    v = ctx._query("SELECT extract(epoch FROM max(published_at))::float8 FROM outbox.events")[0][0]
    return float(v) if v is not None else None


def relay_audit(ctx, config: dict) -> tuple[int, Optional[dict], str]:
    """`outbox-relay audit --json` with the relay's config (direct addresses)."""
    a = Relay(config, ctx.workdir, binary=ctx.relay_bin, name="audit")
    r = a.command("audit", "--json", timeout_s=600)
    rep = None
    if r.returncode in (0, 1) and r.stdout.strip():
        try:
            rep = json.loads(r.stdout)
        except ValueError:
            rep = None
    return r.returncode, rep, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-3000:]}"


LEADS, STANDS = "holding the leader lock", "standing by"


def leader_and_standby(a: Relay, b: Relay, timeout_s: float = 60.0) -> tuple:
    """(leader, standby) once one relay's log says it holds the leader lock and the other's
    that it stands by; fails if either dies meanwhile."""
    from .wait import wait_until

    def roles():
        la, lb = a.log_text(), b.log_text()
        if LEADS in la and STANDS in lb and LEADS not in lb:
            return a, b
        if LEADS in lb and STANDS in la and LEADS not in la:
            return b, a
        return None

    def both_alive():
        a.assert_running("at start")
        b.assert_running("at start")

    return wait_until(roles, timeout_s, 0.05, "one relay leading, the other standing by", both_alive)


class FaultRun:
    """One scenario in one mode: writers (service-like, per-key sequence) into a fresh topic
    and the relay; the test drives the fault, then finish() measures and checks."""

    def __init__(self, ctx, scenario: str, prof: Profile, relay_overrides: Optional[dict] = None):
        self.ctx = ctx
        self.scenario = scenario
        self.profile = prof
        self.rng = rng_for(f"{scenario}/{ctx.mode}")
        # writers run until finish() (or stop_writers()) stops them: total is a ceiling only
        self.topic, self.writers = start_load(
            ctx,
            10**9,
            keys=KEYS_100,
            threads=prof.writer_threads,
            retry=True,
            retry_timeout_s=180.0,
            seed=self.rng.randrange(1 << 30),
        )
        # a quicker recovery and slot report than the defaults, so that drains are short
        self.overrides = {"relay": {"backoff_max_ms": 2000}}
        self.delivery = DELIVERY
        if self.delivery == "exactly_once":
            cp = ctx.topic("checkpoints", partitions=1, create=False)
            self.overrides["delivery"] = {"guarantee": "exactly_once", "checkpoint_topic": cp}
        if ctx.mode == "replication":
            self.overrides["source"] = {"replication": {"status_interval_ms": 1000}}
        if relay_overrides:
            from .relay import deep_merge

            self.overrides = deep_merge(self.overrides, relay_overrides)
        self.config = ctx.config(self.overrides)
        self.batch_size = self.config["source"]["polling"]["batch_size"]
        # what one abrupt death may send again: the in-flight window (both modes read ahead)
        window = self.config["source"].get("pipeline", {}).get("max_in_flight_rows", 5000)
        self.batch_size = max(self.batch_size, window)
        self.crashes = 0  # abrupt relay deaths (SIGKILL, crash points): each may re-send a batch
        self.fault_end: Optional[float] = None  # time.time() when the fault was over
        self.writers_stopped = False

    # --------------------------------------------------------------- pieces
    def relay(self, name: str = "relay", binary: Optional[Path] = None, env: Optional[dict] = None,
              overrides: Optional[dict] = None) -> Relay:
        cfg = self.config if overrides is None else self.ctx.config(overrides)
        r = Relay(cfg, self.ctx.workdir, binary=binary or self.ctx.relay_bin, name=name, env=env)
        self.ctx._relays.append(r)  # stopped by the ctx cleanup whatever happens
        return r

    def start(self, relay: Relay) -> Relay:
        """Start the relay (streaming first in replication mode), then the writers, and
        wait until rows are being marked."""
        relay.start()
        if self.ctx.mode == "replication":
            self.ctx.wait_streaming(relay, timeout_s=60)
        self.writers.start()
        self.wait_progress(relay)
        return relay

    def start_leader_and_standby(self, hold_s: Callable[[], float], what: str) -> tuple[Relay, Relay]:
        """Two relays (relay-a, relay-b) started together; once one leads and the other stands
        by, the leader streaming (replication mode) and publishing under the writers, both must
        stay up hold_s() more seconds (`what` names that moment in a failure), and the standby
        must not have taken the leader lock. Returns (leader, standby)."""
        a, b = self.relay(name="relay-a"), self.relay(name="relay-b")
        a.start()
        b.start()  # together: whichever takes the leader lock first publishes
        leader, standby = leader_and_standby(a, b)

        def both_alive():
            a.assert_running(what)
            b.assert_running(what)

        if self.ctx.mode == "replication":
            self.ctx.wait_streaming(leader, timeout_s=60)
        self.writers.start()
        self.wait_progress(leader)
        hold(hold_s(), check=both_alive)
        assert LEADS not in standby.log_text(), "both relays took the leader lock"
        return leader, standby

    def run_to_crash_point(self, spec: str) -> Relay:
        """A relay with OUTBOX_RELAY_CRASH_AT=spec started (streaming first in replication
        mode), then the writers; returns it once it has died (the test checks how)."""
        relay = self.relay(env={"OUTBOX_RELAY_CRASH_AT": spec})
        relay.start()
        if self.ctx.mode == "replication":
            self.ctx.wait_streaming(relay, timeout_s=60)
        self.writers.start()
        wait_until(lambda: not relay.running, 120, 0.05, f"the relay dying at crash point {spec}")
        return relay

    def wait_progress(self, relay: Optional[Relay] = None, rows: int = 50, timeout_s: float = 60.0) -> int:
        """Until `rows` more rows are marked than now (the relay is publishing)."""
        base = self.ctx.marked()
        return self.ctx.wait_marked_at_least(base + rows, timeout_s, relay)

    def sigkill_loop(self, relay: Relay) -> int:
        """For the profile's kill_loop_s: wait kill_interval_s (drawn from the run's rng; the
        relay must stay up meanwhile), SIGKILL the relay and start it again at once. Each kill
        counts in crashes; ends with fault_over(). Returns the number of kills."""
        kills = 0
        t_end = time.monotonic() + self.profile.kill_loop_s
        while time.monotonic() < t_end:
            hold(self.rng.uniform(*self.profile.kill_interval_s), check=lambda: relay.assert_running("between kills"))
            relay.kill()
            self.crashes += 1
            kills += 1
            relay.start()
        self.fault_over()
        return kills

    def fault_over(self) -> None:
        """The fault has ended now; the writers stop here so that the drain has an end."""
        self.fault_end = time.time()
        self.stop_writers()

    def stop_writers(self) -> None:
        if not self.writers_stopped:
            self.writers.stop()
            self.writers.join(180)
            self.writers_stopped = True

    # ---------------------------------------------------------------- finish
    def finish(
        self,
        relay: Relay,
        fault: str,
        duplicates: str = "per_crash",
        expect_duplicates: bool = False,
        drain_timeout_s: float = 300.0,
        other_relays: tuple = (),
        fail: bool = True,
    ) -> FaultRow:
        """Drain, stop the relay with SIGTERM (exit 0 expected), audit with the relay's
        audit and the Python one, record the row, then assert:
        lost = 0, order violations = 0, every row marked, both audits agree, and duplicates:
        "none" (every restart was clean: SIGTERM), "per_crash" (at most one batch per abrupt
        relay death, promise crash-loses-nothing (a) in docs/design/how-it-works.md) or "any"
        (server or network faults: its (b); counted, not bounded). expect_duplicates: at least one (the relay died between
        Kafka's acknowledgement and the mark). fail=False: return the row with its problems
        instead of failing the test (the caller fails it once every row is recorded)."""
        assert duplicates in ("none", "per_crash", "any"), duplicates
        if self.delivery == "exactly_once":  # whatever the fault: none
            duplicates, expect_duplicates = "none", False
        ctx = self.ctx
        if self.fault_end is None:
            self.fault_over()
        self.stop_writers()
        problems: list[str] = []
        total = ctx.counts()[0]
        try:
            ctx.wait_all_published(total, drain_timeout_s, relay)
        except AssertionError as e:
            problems.append(f"not drained: {e}")
        last = last_mark_epoch(ctx)
        drain = max(0.0, last - self.fault_end) if last is not None else None
        if ctx.mode == "replication" and not problems:  # the running relay confirms it
            try:
                ctx.check_slot_caught_up(self.writers.max_pre_commit_lsn, relay)
            except AssertionError as e:
                problems.append(f"slot not confirmed past the last transaction: {e}")
        if relay.running:
            rc = relay.terminate(60)
            if rc != 0:
                problems.append(f"relay exit code {rc} on SIGTERM (expected 0)")
        else:
            problems.append(f"relay not running at the end (exit {relay.returncode})")
        for r in other_relays:
            r.stop_quietly()

        rc, rep, raw = relay_audit(ctx, ctx.config())
        rows = ctx.rows()
        records = read_topic(ctx.kafka, self.topic)
        py = audit(rows, records)
        if rep is None:
            problems.append(f"outbox-relay audit gave no report: {raw}")
            lost, dups, order, events = len(py.lost), py.duplicate_count, len(py.order_violations_first_seen), py.rows
        else:
            lost, dups, order, events = rep["lost"], rep["duplicates"], rep["order_violations"], rep["rows"]
            if rc != (0 if lost == 0 and order == 0 else 1) or rep["ok"] != (rc == 0):
                problems.append(f"audit exit code {rc} does not match its report: {raw}")
            for k in ("pending", "unknown", "foreign", "dead_lettered"):
                if rep.get(k):
                    problems.append(f"audit: {k} = {rep[k]}")
            mine = (len(py.lost), py.duplicate_count, len(py.order_violations_first_seen), py.rows)
            if mine != (lost, dups, order, events):
                problems.append(
                    f"the audits disagree: relay (lost, duplicates, order, rows) = {(lost, dups, order, events)}, "
                    f"Python {mine}"
                )
        if lost:
            problems.append(f"{lost} events LOST, e.g. ids {rep['lost_examples'][:10] if rep else [r.id for r in py.lost[:10]]}")
        if order:
            ex = rep["order_violation_examples"][:5] if rep else py.order_violations_first_seen[:5]
            problems.append(f"{order} per-key ORDER VIOLATIONS, e.g. {ex}")
        for what, items in (
            ("rows not marked published", py.unmarked),
            ("records with missing headers", py.missing_headers),
            ("records differing from their row", py.mismatches),
            ("records matching no row", py.unknown),
        ):
            if items:
                problems.append(f"{len(items)} {what}")
        if py.keys_split:
            problems.append(f"{len(py.keys_split)} keys on several partitions")
        if duplicates == "none" and dups:
            problems.append(f"{dups} duplicates although every restart was clean (SIGTERM)")
        if duplicates == "per_crash" and dups > self.crashes * self.batch_size:
            problems.append(
                f"{dups} duplicates: more than one window ({self.batch_size}) per abrupt relay death "
                f"({self.crashes}), which promise crash-loses-nothing (a) states"
            )
        if expect_duplicates and dups == 0:
            problems.append("no duplicate although the relay died between Kafka's acknowledgement and the mark")

        mode = ctx.mode if self.delivery == "at_least_once" else f"{ctx.mode}, {self.delivery}"
        row = FaultRow(self.scenario, mode, events, lost, dups, order, drain, fault, problems)
        record(ctx.request, row)
        if problems:
            row.details = "\n".join(
                f"--- {r.name} log ({r.log_path}) tail:\n{r.log_tail(25)}" for r in (relay, *other_relays)
            )
            row.details = (
                f"{self.scenario} [{ctx.mode}]: " + "\n".join(problems) + f"\nrow: {row.line()}\n{py.summary()}\n"
                + row.details
            )
            if fail:
                pytest.fail(row.details, pytrace=False)
        return row
