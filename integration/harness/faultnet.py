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

from .netcut import HOST, NetCutUnavailable, TcpForwarder, _nft, _Pair, check_nft

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


# ------------------------------------------------------------- PostgreSQL side
class SlowForwarder(TcpForwarder):
    """netcut.TcpForwarder (cut/restore with nftables) that can also add latency."""

    def __init__(self, target_port: int, seed: int = 1, **kw):
        self.delay = _Delay(seed)  # before the base starts accepting
        super().__init__(target_port, **kw)

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:  # type: ignore[override]
        _delay_pump(self.delay, pair, src, dst)

    def slow(self, lo_ms: float, hi_ms: Optional[float] = None) -> None:
        """From now on every chunk waits lo_ms..hi_ms (uniform) in each direction."""
        self.delay.set(lo_ms, hi_ms)

    def unslow(self) -> None:
        self.delay.set(None)


# ------------------------------------------------------------------- netns side
def _run(argv: list[str], input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetCutUnavailable(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n{input or ''}")
    return r


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
        argv = ["nft", "-f", "-"] if script is None else ["nft", "-f", "-"]
        if script is None:
            argv = ["nft", *args]
        return self.exec(argv, input=script, check=check)

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


class NetnsLink:
    """Listens on 127.0.0.1:listen_port inside `netns`, forwards each connection to
    127.0.0.1:target_port in the host namespace; slow() and cut() as the module says."""

    def __init__(self, netns: Netns, target_port: int, listen_port: Optional[int] = None, seed: int = 1):
        self.netns = netns
        self.target = (HOST, target_port)
        self.delay = _Delay(seed)

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, target_port if listen_port is None else listen_port))
            s.listen(128)
            s.settimeout(0.2)
            return s

        self._listener = netns.call(listen)
        self.port: int = self._listener.getsockname()[1]
        n = next(_counter)
        self.table_ns = f"outbox_faultnet_{self.port}"
        self.table_host = f"outbox_faultnet_up_{os.getpid()}_{n}"
        self._cond = threading.Condition()
        self._pairs: list[_Pair] = []
        self._cutting = False
        self._closed = False
        self.cut_at: Optional[float] = None
        self.restored_at: Optional[float] = None
        self.accepted = 0
        self.errors: list[str] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"netnslink-{self.port}", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closed:
                    return
                continue
            down.settimeout(None)
            with self._cond:
                # as in netcut: an upstream opened during a cut would escape the rules
                self._cond.wait_for(lambda: not self._cutting or self._closed)
                if self._closed:
                    down.close()
                    return
                try:
                    up = socket.create_connection(self.target, timeout=10)  # host namespace
                    up.settimeout(None)
                except OSError as e:
                    self.errors.append(f"upstream connect: {e}")
                    down.close()
                    continue
                for s in (down, up):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pair = _Pair(down, up)
                self._pairs.append(pair)
                self.accepted += 1
            for src, dst in ((down, up), (up, down)):
                t = threading.Thread(target=_delay_pump, args=(self.delay, pair, src, dst), daemon=True)
                pair.threads.append(t)
                t.start()

    def slow(self, lo_ms: float, hi_ms: Optional[float] = None) -> None:
        self.delay.set(lo_ms, hi_ms)

    def unslow(self) -> None:
        self.delay.set(None)

    @staticmethod
    def _table(name: str, rules: list[str]) -> str:
        body = "\n".join("    " + r for r in rules)
        return (
            f"table inet {name} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n"
            f"{body}\n  }}\n}}\n"
        )

    def cut(self) -> list[int]:
        """Drop every packet between the relay and the link (inside the namespace) and
        between the link and the server (host, the link's upstream ports only)."""
        with self._cond:
            if self._cutting:
                raise RuntimeError("already cut")
            self._cutting = True
            ports = sorted({p.up_local_port for p in self._pairs if not p.closed})
            try:
                self.netns.nft(
                    self._table(
                        self.table_ns,
                        [f'iifname "lo" tcp dport {self.port} drop', f'iifname "lo" tcp sport {self.port} drop'],
                    )
                )
                if ports:
                    plist = ", ".join(map(str, ports))
                    t = self.target[1]
                    _nft(
                        self._table(
                            self.table_host,
                            [
                                f'iifname "lo" tcp sport {{ {plist} }} tcp dport {t} drop',
                                f'iifname "lo" tcp sport {t} tcp dport {{ {plist} }} drop',
                            ],
                        )
                    )
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

    @property
    def is_cut(self) -> bool:
        return self._cutting

    def close(self) -> None:
        try:
            self.restore()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
                pairs = list(self._pairs)
            try:
                self._listener.close()
            except OSError:
                pass
            for p in pairs:
                p.wake()
            self._acceptor.join(5)
            for p in pairs:
                for t in list(p.threads):
                    t.join(5)
                p.abort()
