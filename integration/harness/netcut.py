"""A TCP forwarder whose connections a test can cut like a network would.

`TcpForwarder(target_port)` listens on a free 127.0.0.1 port and forwards each
connection to 127.0.0.1:target_port (PostgreSQL). `cut()` installs nftables rules
that drop, on loopback input only, every packet of the forwarder's listening
port (both directions: the client's new and existing connections) and of the
forwarder's existing upstream connections (by their exact source port and the
target port, both directions). Nothing else on the machine is touched.

Why packets must be dropped, not just forwarding stopped: a forwarder that stops
copying bytes still has a live kernel socket on each side, which keeps ACKing
data and answering keepalive probes, so neither the client nor the server ever
sees a dead peer. Dropping the packets in the kernel is what a broken network
does: every sender's bytes and probes go unanswered. Only the input hook is
used, so each sender's transmission "succeeds" and is never acknowledged (an
output-hook drop would instead fail the sender's transmit locally).

`restore()` deletes the rules (one nftables table of our own, named after the
port); `close()` restores and closes every socket. Needs nft (package nftables)
and CAP_NET_ADMIN.

`Forwarder` is the forwarding itself (accept, one upstream per connection, a pump
per direction, close), shared with faultnet.py's SlowForwarder and NetnsLink;
`_table`, `_listener_rules` and `_upstream_rules` are the nftables rules all cuts use.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from typing import Optional

HOST = "127.0.0.1"


class NetCutUnavailable(RuntimeError):
    """nft is missing or may not change the ruleset here."""


def _run(argv: list[str], input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetCutUnavailable(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n{input or ''}")
    return r


def _nft_argv(script: Optional[str], args: tuple) -> list[str]:
    """`nft -f -` (the script on stdin: one transaction) or `nft ARGS...`."""
    return ["nft", *args] if script is None else ["nft", "-f", "-"]


def _nft(script: Optional[str] = None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(_nft_argv(script, args), input=script, check=check)


def _table(name: str, rules: list[str]) -> str:
    """An nftables table `name` whose input chain (loopback traffic included) runs `rules`."""
    body = "\n".join("    " + r for r in rules)
    return (
        f"table inet {name} {{\n"
        "  chain input {\n"
        "    type filter hook input priority -10; policy accept;\n"
        f"{body}\n"
        "  }\n"
        "}\n"
    )


def _listener_rules(port: int) -> list[str]:
    """Drop every packet to and from the listening `port` (new and accepted connections)."""
    return [f'iifname "lo" tcp dport {port} drop', f'iifname "lo" tcp sport {port} drop']


def _upstream_rules(ports: list[int], target_port: int) -> list[str]:
    """Drop every packet between the local `ports` and `target_port`, both directions."""
    plist = ", ".join(str(p) for p in sorted(set(ports)))
    return [
        f'iifname "lo" tcp sport {{ {plist} }} tcp dport {target_port} drop',
        f'iifname "lo" tcp sport {target_port} tcp dport {{ {plist} }} drop',
    ]


def check_nft() -> None:
    """Raises NetCutUnavailable unless nft can add and delete a table here."""
    if shutil.which("nft") is None:
        raise NetCutUnavailable("nft not found: install nftables (integration/env/install-deps.sh does)")
    name = "outbox_netcut_probe"
    _nft(None, "delete", "table", "inet", name, check=False)
    _nft(f"table inet {name} {{\n}}\n")
    _nft(None, "delete", "table", "inet", name)


class _Pair:
    def __init__(self, down: socket.socket, up: socket.socket):
        self.down = down
        self.up = up
        self.down_peer_port = down.getpeername()[1]
        self.up_local_port = up.getsockname()[1]
        self._lock = threading.Lock()
        self._eof = 0
        self.closed = False
        self.threads: list[threading.Thread] = []

    def abort(self) -> None:
        """Close both sockets (with RST: linger 0), e.g. when one side reset."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.down, self.up):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def eof(self, dst: socket.socket) -> None:
        """One direction ended cleanly: pass the FIN on; close once both did."""
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            self._eof += 1
            done = self._eof == 2 and not self.closed
            if done:
                self.closed = True
        if done:
            for s in (self.down, self.up):
                try:
                    s.close()
                except OSError:
                    pass

    def wake(self) -> None:
        """Unblock the pump threads (used by close())."""
        for s in (self.down, self.up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Forwarder:
    """Accepts on `listener`, opens one upstream connection to `target` per connection and
    copies bytes both ways (`_pump`, one thread per direction). While `_cutting`, new
    connections wait before their upstream is opened (an upstream opened during a cut would
    escape the rules). Subclasses own the cut: they set `_cutting` under `_cond` in cut()
    and clear it, notifying, in restore(). Use as a context manager or call close()."""

    def __init__(self, listener: socket.socket, target: tuple[str, int], connect_timeout_s: float, name: str):
        self._listener = listener
        self.port: int = listener.getsockname()[1]
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self._cond = threading.Condition()
        self._pairs: list[_Pair] = []
        self._cutting = False
        self._closed = False
        self.cut_at: Optional[float] = None
        self.restored_at: Optional[float] = None
        self.accepted = 0
        self.errors: list[str] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{name}-{self.port}", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------- forwarding
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
                # While cut, a connection that got in just before the rules waits here
                # (its packets are dropped anyway); an upstream opened now would escape them.
                self._cond.wait_for(lambda: not self._cutting or self._closed)
                if self._closed:
                    down.close()
                    return
                try:
                    up = socket.create_connection(self.target, timeout=self.connect_timeout_s)
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
                t = threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True)
                pair.threads.append(t)
                t.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pair.abort()
            return
        pair.eof(dst)

    @property
    def upstream_ports(self) -> list[int]:
        """Local ports of the open upstream connections (the server sees them as client_port)."""
        with self._cond:
            return [p.up_local_port for p in self._pairs if not p.closed]

    @property
    def is_cut(self) -> bool:
        return self._cutting

    def restore(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Restore the network, stop accepting, close every connection."""
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


class TcpForwarder(Forwarder):
    """See the module doc. Use as a context manager or call close()."""

    def __init__(self, target_port: int, target_host: str = HOST, connect_timeout_s: float = 10.0):
        check_nft()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))  # a free port, chosen by the kernel
        listener.listen(64)
        listener.settimeout(0.2)
        self.table = f"outbox_netcut_{listener.getsockname()[1]}"
        self.cut_upstream_ports: list[int] = []
        _nft(None, "delete", "table", "inet", self.table, check=False)  # a leftover of a crashed run
        super().__init__(listener, (target_host, target_port), connect_timeout_s, "netcut")

    # -------------------------------------------------------------- the cut
    def _ruleset(self, upstream_ports: list[int]) -> str:
        rules = _listener_rules(self.port)
        if upstream_ports:
            rules += _upstream_rules(upstream_ports, self.target[1])
        return _table(self.table, rules)

    def cut(self) -> list[int]:
        """Drop every packet of the forwarder's connections, old and new; returns the
        upstream (client-side) ports that were cut."""
        with self._cond:
            if self._cutting:
                raise RuntimeError("already cut")
            self._cutting = True
            ports = [p.up_local_port for p in self._pairs if not p.closed]
            try:
                _nft(self._ruleset(ports))  # one transaction: all rules or none
            except BaseException:
                self._cutting = False
                self._cond.notify_all()
                raise
            self.cut_at = time.monotonic()
            self.cut_upstream_ports = ports
            return ports

    def restore(self) -> None:
        """Remove the rules: packets flow again (the old connections included)."""
        with self._cond:
            if not self._cutting:
                return
            _nft(None, "delete", "table", "inet", self.table)
            self._cutting = False
            self.restored_at = time.monotonic()
            self._cond.notify_all()

    def rules(self) -> str:
        """The installed rules (for failure messages)."""
        r = _nft(None, "list", "table", "inet", self.table, check=False)
        return r.stdout if r.returncode == 0 else f"(no table {self.table})"
