"""CPU time and peak resident memory of process trees, read from /proc (Linux only)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f is not None:
            out.setdefault(int(f[1]), []).append(int(d))  # f[1] is ppid
    return out


def descendants(pid: int) -> list[int]:
    """pid and every live descendant."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def tree_cpu_seconds(pid: Optional[int]) -> float:
    """user + system CPU seconds of pid and its live descendants, plus what its exited,
    reaped children used (cutime/cstime). 0 when pid is gone."""
    if not pid:
        return 0.0
    total = 0
    for i, p in enumerate(descendants(pid)):
        f = _stat_fields(p)
        if f is None:
            continue
        # f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime (fields 14-17 of stat)
        total += int(f[11]) + int(f[12])
        if i == 0:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def tree_peak_rss_mb(pid: Optional[int]) -> float:
    """Sum of VmHWM (peak resident set) over pid and its live descendants, in MB."""
    if not pid:
        return float("nan")
    kb = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kb += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue
    return kb / 1024


class CpuMeter:
    """CPU seconds of a process tree between two moments: start() then seconds()."""

    def __init__(self, pid_fn):
        self._pid_fn = pid_fn  # called each time: the process may be replaced
        self._t0 = 0.0

    def start(self) -> "CpuMeter":
        self._t0 = tree_cpu_seconds(self._pid_fn())
        return self

    def seconds(self) -> float:
        return tree_cpu_seconds(self._pid_fn()) - self._t0


# ------------------------------------------------------------------ PostgreSQL by process kind
# The parts PgCpuMeter splits a PostgreSQL server's CPU into, in the order the bench prints
# them: (key, label of at most 40 characters).
PG_KINDS = (
    ("client", "reader's sessions (client backends)"),
    ("walsender", "walsender"),
    ("autovacuum", "autovacuum workers still running"),
    ("exited", "exited processes (autovacuum workers...)"),
    ("writers", "checkpointer + bgwriter + walwriter"),
    ("other", "other (postmaster, launchers)"),
)

# Process titles ("postgres: TITLE ...", after the cluster_name when one is set) and their kind.
_PG_TITLES = (
    ("walsender ", "walsender"),
    ("autovacuum worker", "autovacuum"),
    ("checkpointer", "writers"),
    ("background writer", "writers"),
    ("walwriter", "writers"),
    ("parallel worker for PID", "client"),  # a session's query, run in parallel
)
# A client backend's title: "USER DATABASE HOST(PORT) ACTIVITY" or "USER DATABASE [local] ..."
_PG_CLIENT = re.compile(r"^\S+ \S+ (\[local\]|\S+\(\d+\))( |$)")


def pg_process_kind(cmdline: str) -> str:
    """The PG_KINDS key of a PostgreSQL child process by its /proc/PID/cmdline, where the server
    writes its process title ("postgres: walsender ...", "postgres: autovacuum worker ...",
    "postgres: checkpointer", "postgres: USER DB HOST(PORT) idle"). Anything else (the
    launchers, the archiver, a later version's new processes) is "other"."""
    title = cmdline.replace("\0", " ").strip()
    if not title.startswith("postgres: "):
        return "other"
    title = title[len("postgres: "):]
    if ": " in title:  # "CLUSTER_NAME: TITLE" (no title of its own has ": ")
        title = title.split(": ", 1)[1]
    for prefix, kind in _PG_TITLES:
        if title.startswith(prefix):
            return kind
    return "client" if _PG_CLIENT.match(title) else "other"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _pg_snapshot(postmaster: Optional[int]) -> tuple[dict, int]:
    """({(pid, start time): (kind, CPU ticks)} of the postmaster and its live descendants,
    the ticks of the postmaster's exited, reaped children). The same reads as
    tree_cpu_seconds(): the sum of all of it is its figure."""
    procs: dict = {}
    reaped = 0
    if not postmaster:
        return procs, reaped
    for i, p in enumerate(descendants(postmaster)):
        f = _stat_fields(p)
        if f is None:
            continue
        if i == 0:
            kind, reaped = "other", int(f[13]) + int(f[14])
        else:
            kind = pg_process_kind(_cmdline(p))
        procs[(p, f[19])] = (kind, int(f[11]) + int(f[12]))  # f[19]: start time (field 22)
    return procs, reaped


class PgCpuMeter:
    """CPU seconds of a PostgreSQL server (the postmaster's process tree, as CpuMeter counts
    it) between start() and stop(), and their split by process kind (PG_KINDS). A process
    alive at both ends counts its difference under its kind, one started meanwhile its whole
    CPU. A process that exited meanwhile is reaped by the postmaster: its whole CPU lands in
    the postmaster's cutime/cstime, and counts as "exited" less what it had used before
    start() (so no kind goes below zero). Autovacuum workers, parallel workers and short
    sessions exit: "exited". The parts add up to the total exactly (in clock ticks)."""

    def __init__(self, pid_fn):
        self._pid_fn = pid_fn
        self._start: tuple[dict, int] = ({}, 0)
        self._ticks: dict[str, int] = {}

    def start(self) -> "PgCpuMeter":
        self._start = _pg_snapshot(self._pid_fn())
        return self

    def stop(self) -> "PgCpuMeter":
        (a, a_reaped), (b, b_reaped) = self._start, _pg_snapshot(self._pid_fn())
        ticks = {k: 0 for k, _ in PG_KINDS}
        for key, (kind, t) in b.items():
            ticks[kind] += t - a.get(key, (kind, 0))[1]
        ticks["exited"] += (b_reaped - a_reaped) - sum(t for key, (_, t) in a.items() if key not in b)
        self._ticks = ticks
        return self

    def seconds(self) -> float:
        """The total between start() and stop()."""
        return sum(self._ticks.values()) / CLK_TCK

    def by_kind(self) -> dict[str, float]:
        return {k: t / CLK_TCK for k, t in self._ticks.items()}


# ------------------------------------------------------------------ threads of one process
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # HotSpot's compiler threads (comm: 15 chars)


def _threads_ticks(pid: Optional[int], prefixes: tuple[str, ...]) -> dict:
    """{(tid, start time): CPU ticks} of pid's live threads whose name starts with a prefix."""
    out: dict = {}
    if not pid:
        return out
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            if not Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith(prefixes):
                continue
            f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[(tid, f[19])] = int(f[11]) + int(f[12])
    return out


class ThreadsCpuMeter:
    """CPU seconds of some threads of a process (by name, e.g. JIT_THREADS) between start()
    and seconds(): threads alive at both ends count their difference, threads started
    meanwhile all of theirs. A thread that ended meanwhile (HotSpot stops idle compiler
    threads) is not counted: a lower bound."""

    def __init__(self, pid_fn, prefixes: tuple[str, ...]):
        self._pid_fn, self._prefixes = pid_fn, prefixes
        self._t0: dict = {}

    def start(self) -> "ThreadsCpuMeter":
        self._t0 = _threads_ticks(self._pid_fn(), self._prefixes)
        return self

    def seconds(self) -> float:
        now = _threads_ticks(self._pid_fn(), self._prefixes)
        return sum(t - self._t0.get(k, 0) for k, t in now.items()) / CLK_TCK
