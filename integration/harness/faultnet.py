"""Network faults between the relay and one server: added latency ("slowed") and cuts.

`SlowForwarder(target_port)` is netcut.TcpForwarder (its cut() drops the packets with
nftables on loopback, both ends see silence) plus `slow(lo_ms, hi_ms)`: every chunk of
bytes, in each direction, is held for a random 50-200 ms (say) before it is passed on, in
order, without stalling the reads (a delay line: one reader and one sender thread per
direction). Used between the relay and PostgreSQL (the relay's dsn names the forwarder).

Kafka cannot be reached through a plain forwarder: the broker's metadata advertises its own
listener (127.0.0.1:PORT), so a client that bootstrapped through a forwarder connects to the
broker directly afterwards. `Netns` gives the relay a private network namespace (`ip netns`)
in which 127.0.0.1:PORT is a `NetnsLink` listening on the broker's own port number, and
forwarding to the real broker in the host namespace: every connection of the relay to that
broker, the bootstrap one and the ones to the advertised address, goes through it. The same
config file works inside and outside (PostgreSQL gets a NetnsLink too, without faults).
`NetnsLink.cut()` installs nftables rules inside the namespace (relay <-> link: the relay
sees silence) and in the host namespace on the link's upstream connections (link <-> broker:
the broker sees silence); `slow()` is the same delay line. Nothing outside the namespace and
those exact upstream ports is touched, so other processes on the machine are unaffected.
(tc netem would be the usual tool for latency; this kernel has no netem qdisc, and a qdisc
on the shared loopback would slow other people's traffic too.)

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns), nft and ip.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .netcut import (
    HOST,
    Forwarder,
    TcpForwarder,
    _listener_rules,
    _nft,
    _nft_argv,
    _Pair,
    _run,
    _table,
    _upstream_rules,
    check_nft,
)

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_MAX_QUEUED_BYTES = 4 << 20  # per direction: a reader waits when the delay line holds this much
_counter = itertools.count(1)


# ------------------------------------------------------------------ delay line
class _Delay:
    """The latency setting shared by a forwarder's connections (None: none added)."""

    def __init__(self, seed: int):
        self._lock = threading.Lock()
        self._range: Optional[tuple[float, float]] = None
        self._rng = random.Random(seed)

    def set(self, lo_ms: Optional[float], hi_ms: Optional[float] = None) -> None:
        with self._lock:
            self._range = None if lo_ms is None else (lo_ms / 1000.0, (hi_ms if hi_ms is not None else lo_ms) / 1000.0)

    def draw(self) -> float:
        with self._lock:
            if self._range is None:
                return 0.0
            lo, hi = self._range
            return self._rng.uniform(lo, hi)

    @property
    def active(self) -> bool:
        with self._lock:
            return self._range is not None


def _delay_pump(delay: _Delay, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
    """src -> dst through a delay line: this thread reads, a second one sends each chunk
    once its release time (arrival + a delay drawn now) has come, in arrival order."""
    cond = threading.Condition()
    queue: collections.deque = collections.deque()  # (release_at, bytes or None for EOF)
    state = {"bytes": 0, "done": False}

    def sender() -> None:
        while True:
            with cond:
                cond.wait_for(lambda: queue or state["done"])
                if not queue:
                    return  # reader failed: the pair was aborted
                release_at, data = queue[0]
            wait = release_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the added latency itself, not synchronisation
            with cond:
                queue.popleft()
                if data is not None:
                    state["bytes"] -= len(data)
                cond.notify_all()
            if data is None:
                pair.eof(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                pair.abort()
                with cond:
                    state["done"] = True
                    cond.notify_all()
                return

    t = threading.Thread(target=sender, daemon=True, name="faultnet-send")
    pair.threads.append(t)
    t.start()
    last_release = 0.0
    try:
        while True:
            data = src.recv(65536)
            with cond:
                cond.wait_for(lambda: state["bytes"] < _MAX_QUEUED_BYTES or state["done"])
                if state["done"]:
                    return
                # never before an earlier chunk: bytes stay in order whatever the draws
                last_release = max(last_release, time.monotonic() + delay.draw())
                queue.append((last_release, data or None))
                if data:
                    state["bytes"] += len(data)
                cond.notify_all()
            if not data:
                return  # EOF queued: the sender passes it on after the delay
    except OSError:
        pair.abort()
        with cond:
            state["done"] = True
            queue.clear()
            cond.notify_all()


class _Slowed:
    """A forwarder whose pumps are delay lines (slow()/unslow()); `delay` is set before the
    forwarder starts accepting."""

    delay: _Delay

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        _delay_pump(self.delay, pair, src, dst)

    def slow(self, lo_ms: float, hi_ms: Optional[float] = None) -> None:
        """From now on every chunk waits lo_ms..hi_ms (uniform) in each direction."""
        self.delay.set(lo_ms, hi_ms)

    def unslow(self) -> None:
        self.delay.set(None)


# ------------------------------------------------------------- PostgreSQL side
class SlowForwarder(_Slowed, TcpForwarder):
    """netcut.TcpForwarder (cut/restore with nftables) that can also add latency."""

    def __init__(self, target_port: int, seed: int = 1, **kw):
        self.delay = _Delay(seed)  # before the base starts accepting
        super().__init__(target_port, **kw)


# ------------------------------------------------------------------- netns side
class Netns:
    """A private network namespace with only a loopback, for the relay process."""

    def __init__(self) -> None:
        check_nft()
        self.name = f"outbox-fault-{os.getpid()}-{next(_counter)}"
        self.path = Path("/run/netns") / self.name
        _run(["ip", "netns", "add", self.name])
        self._closed = False
        try:
            self.exec(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    def exec(self, argv: list[str], input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *argv], input=input, check=check)

    def nft(self, script: Optional[str] = None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.exec(_nft_argv(script, args), input=script, check=check)

    def call(self, fn: Callable[[], T]) -> T:
        """fn() on a thread that entered the namespace (setns applies to one thread only):
        sockets it creates live in the namespace for good."""
        out: dict = {}

        def body() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({self.path}): {os.strerror(e)}")
                out["value"] = fn()
            except BaseException as e:  # noqa: BLE001
                out["error"] = e
            finally:
                os.close(fd)
            # the thread ends here, with it its namespace membership

        t = threading.Thread(target=body, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["value"]

    def wrapper(self, binary: os.PathLike | str, directory: os.PathLike | str) -> Path:
        """An executable script that runs `binary "$@"` inside the namespace (ip netns exec
        execs in place: the pid a caller gets is the binary's)."""
        p = Path(directory) / f"in-{self.name}.sh"
        p.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {binary} "$@"\n')
        p.chmod(0o755)
        return p

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _run(["ip", "netns", "del", self.name], check=False)


class NetnsLink(_Slowed, Forwarder):
    """Listens on 127.0.0.1:listen_port inside `netns`, forwards each connection to
    127.0.0.1:target_port in the host namespace; slow() and cut() as the module says."""

    def __init__(self, netns: Netns, target_port: int, listen_port: Optional[int] = None, seed: int = 1):
        self.netns = netns
        self.delay = _Delay(seed)

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, target_port if listen_port is None else listen_port))
            s.listen(128)
            s.settimeout(0.2)
            return s

        listener = netns.call(listen)
        n = next(_counter)
        self.table_ns = f"outbox_faultnet_{listener.getsockname()[1]}"
        self.table_host = f"outbox_faultnet_up_{os.getpid()}_{n}"
        # upstream connections open in the host namespace (the acceptor thread's)
        super().__init__(listener, (HOST, target_port), 10, "netnslink")

    def cut(self) -> list[int]:
        """Drop every packet between the relay and the link (inside the namespace) and
        between the link and the server (host, the link's upstream ports only)."""
        with self._cond:
            if self._cutting:
                raise RuntimeError("already cut")
            self._cutting = True
            ports = sorted({p.up_local_port for p in self._pairs if not p.closed})
            try:
                self.netns.nft(_table(self.table_ns, _listener_rules(self.port)))
                if ports:
                    _nft(_table(self.table_host, _upstream_rules(ports, self.target[1])))
            except BaseException:
                self.netns.nft(None, "delete", "table", "inet", self.table_ns, check=False)
                self._cutting = False
                self._cond.notify_all()
                raise
            self.cut_at = time.monotonic()
            return ports

    def restore(self) -> None:
        with self._cond:
            if not self._cutting:
                return
            self.netns.nft(None, "delete", "table", "inet", self.table_ns, check=False)
            _nft(None, "delete", "table", "inet", self.table_host, check=False)
            self._cutting = False
            self.restored_at = time.monotonic()
            self._cond.notify_all()
