"""Polling with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_until(
    probe: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    desc: str = "condition",
    check: Optional[Callable[[], None]] = None,
) -> T:
    """Call probe() until it returns something truthy; return that value.
    check() runs each round and may raise to abort early (e.g. the relay died).
    Raises WaitTimeout after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        if check is not None:
            check()
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s}s waiting for {desc} (last: {last!r})")
        time.sleep(interval_s)


def hold(duration_s: float, check: Optional[Callable[[], None]] = None, interval_s: float = 0.2) -> None:
    """Let wall time pass on purpose (an outage of a given length), still
    running check() so a crash is noticed at once. Not for synchronisation."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        if check is not None:
            check()
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
