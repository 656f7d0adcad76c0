"""CPU time and peak resident memory of process trees, read from /proc (Linux only)."""

from __future__ import annotations

import os
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
