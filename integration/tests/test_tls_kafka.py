"""TLS and SASL to Kafka on a broker of the test's own (harness/tls.py), certificates made
by the test: the relay publishes over SSL and over SASL_SSL with SCRAM-SHA-512; an untrusted
CA, a certificate for another host and a wrong password each stop delivery with an error
naming the cause, in `check` and in `run`'s log, and nothing reaches Kafka by another way;
turning hostname verification off is refused unless explicitly allowed.

Costs about 25 s in CI (broker start ~10 s, shared with test_secrets.py; the failing
`check`s wait their 10 s Kafka probe concurrently).
"""

from __future__ import annotations

import re
import secrets
import threading

from harness import enqueue, wait_until
from harness.tls import relay_kafka_section


def _rows(ctx, topic: str, n: int, start: int = 0) -> None:
    c = ctx.connect()
    for i in range(start, start + n):
        enqueue(c, topic, f"k{i % 3}", f"event {i}".encode())


def _log_shows(relay, pattern: str, timeout_s: float = 60) -> str:
    """Until the relay's log matches `pattern` (case-insensitive); returns the line."""

    def probe():
        m = re.search(f".*(?:{pattern}).*", relay.log_text(), re.IGNORECASE)
        return m.group(0) if m else None

    try:
        return wait_until(probe, timeout_s, 0.1, f"/{pattern}/ in {relay.name}'s log")
    except AssertionError as e:
        raise AssertionError(f"{e}\nlog tail:\n{relay.log_tail()}") from None


def test_publishes_over_ssl_and_over_sasl_ssl_with_scram(ctx, tls_kafka, tmp_path):
    topic = tls_kafka.create_topic(f"tls.{ctx.name}", partitions=1)
    user, password = f"relay-{ctx.name}", secrets.token_hex(12)
    tls_kafka.add_scram_user(user, password)

    _rows(ctx, topic, 10)
    ssl = ctx.relay({"kafka": relay_kafka_section(tls_kafka, "SSL")}, name="ssl")
    r = ssl.check()
    assert r.returncode == 0 and "ok    kafka reachable" in r.stdout, r.stdout + r.stderr
    ssl.start()
    ctx.wait_all_published(10, 60, ssl)
    assert ssl.terminate() == 0

    # SCRAM over TLS, the password from a file (kafka.secret_files).
    secret = tmp_path / "sasl-password"
    secret.write_text(password + "\n")
    section = relay_kafka_section(tls_kafka, "SASL_SSL", **{"sasl.username": user})
    section["secret_files"] = {"sasl.password": str(secret)}
    _rows(ctx, topic, 10, start=10)
    sasl = ctx.relay({"kafka": section}, name="sasl")
    r = sasl.check()
    assert r.returncode == 0 and "ok    kafka reachable" in r.stdout, r.stdout + r.stderr
    sasl.start()
    ctx.wait_all_published(20, 60, sasl)
    assert sasl.terminate() == 0

    records = tls_kafka.consume_all(topic, 20, timeout_s=30, idle_s=0.5)
    assert sorted(rec.value for rec in records) == sorted(f"event {i}".encode() for i in range(20))


# (name, listener, extra properties, what the error must say)
FAILURES = [
    ("untrusted_ca", "SSL", {"ca": "other"}, r"certificate's issuer is not trusted"),
    ("wrong_host", "WRONGHOST", {}, r"(hostname|IP address) mismatch: the certificate"),
    ("wrong_password", "SASL_SSL", {"sasl.password": "not-the-password"},
     r"SASL authentication error: Authentication failed.*invalid credentials"),
]  # fmt: skip


def test_untrusted_ca_wrong_host_and_wrong_password_fail_with_their_cause(ctx, tls_kafka):
    topic = tls_kafka.create_topic(f"tls.{ctx.name}", partitions=1)
    user = f"relay-{ctx.name}"
    tls_kafka.add_scram_user(user, secrets.token_hex(12))
    _rows(ctx, topic, 5)

    relays, checkers, checks = {}, {}, {}
    for name, listener, extra, _ in FAILURES:
        extra = dict(extra)
        if extra.pop("ca", None) == "other":
            extra["ssl.ca.location"] = str(tls_kafka.certs.other_ca)
        if listener == "SASL_SSL":
            extra["sasl.username"] = user
        overrides = {"kafka": relay_kafka_section(tls_kafka, listener, **extra), "relay": {"shutdown_timeout_ms": 1000}}
        relays[name] = ctx.relay(overrides, name=name)
        checkers[name] = ctx.relay(overrides, name=f"{name}-check")  # its own log: run's shows run's

    # The checks wait for their Kafka probe (10 s): run them side by side.
    threads = [threading.Thread(target=lambda n=n: checks.__setitem__(n, checkers[n].check())) for n in relays]
    for t in threads:
        t.start()
    # One at a time: relays on one database take turns (leader lock), and only the leader
    # talks to Kafka.
    for name, listener, _, cause in FAILURES:
        relays[name].start()
        line = _log_shows(relays[name], cause)
        ctx.note(f"{name}: {line.strip()[:240]}")
        relays[name].assert_running("(a Kafka it cannot reach is retried, never an exit)")
        assert relays[name].terminate() == 0
    for t in threads:
        t.join(120)
    for name, listener, _, cause in FAILURES:
        r = checks[name]
        out = r.stdout + r.stderr
        assert r.returncode == 1, f"{name}: check exited {r.returncode}:\n{out}"
        assert re.search(r"FAIL\s+kafka reachable", r.stdout), f"{name}:\n{out}"
        assert re.search(cause, out, re.IGNORECASE), f"{name}: check does not say /{cause}/:\n{out}"

    # Nothing went anywhere: no row marked, no record in the topic.
    assert ctx.counts() == (5, 0)
    assert tls_kafka.consume_all(topic, 0, timeout_s=5, idle_s=1) == []


def test_hostname_verification_off_is_refused_unless_explicitly_allowed(ctx, tls_kafka):
    topic = tls_kafka.create_topic(f"tls.{ctx.name}", partitions=1)
    _rows(ctx, topic, 3)
    section = relay_kafka_section(tls_kafka, "WRONGHOST", **{"ssl.endpoint.identification.algorithm": "none"})
    refused = ctx.relay({"kafka": section}, name="refused")
    for r in (refused.check(), refused.command("run", timeout_s=30)):
        assert r.returncode == 2, r.stdout + r.stderr
        assert re.search(
            r"line \d+: kafka\.properties\.ssl\.endpoint\.identification\.algorithm: none turns off .*"
            r"kafka\.allow_no_hostname_verification: true",
            r.stderr,
        ), r.stderr

    # Allowed explicitly: the wrong-host certificate (same CA) is accepted and rows flow.
    allowed = ctx.relay({"kafka": {**section, "allow_no_hostname_verification": True}}, name="allowed").start()
    ctx.wait_all_published(3, 60, allowed)
    assert allowed.terminate() == 0
    assert len(tls_kafka.consume_all(topic, 3, timeout_s=30, idle_s=0.5)) == 3
