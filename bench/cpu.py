"""CPU time per stack service during a run, read from /proc (Linux; elsewhere it says nothing)."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
OTHER = "other processes on the machine"
BENCH = "bench (HTTP server, client)"


@dataclass(frozen=True)
class _Process:
    ticks: int  # user + system clock ticks
    parent: int


@dataclass(frozen=True)
class Snapshot:
    moment: float
    busy_ticks: int  # the whole machine, every core
    processes: Mapping[int, _Process]


def available() -> bool:
    return (_PROC / "stat").exists()


def snapshot() -> Snapshot | None:
    if not available():
        return None
    processes: dict[int, _Process] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the parenthesised command: state ppid … utime(12) stime(13).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        processes[int(entry.name)] = _Process(ticks=int(fields[11]) + int(fields[12]),
                                              parent=int(fields[1]))
    cpu = (_PROC / "stat").read_text().splitlines()[0].split()[1:]
    idle = int(cpu[3]) + int(cpu[4])  # idle + iowait
    busy = sum(int(value) for value in cpu[:8]) - idle
    return Snapshot(moment=time.monotonic(), busy_ticks=busy, processes=processes)


def usage(before: Snapshot | None, after: Snapshot | None,
          roots: Mapping[int, str]) -> dict[str, float] | None:
    """Cores used on average between the snapshots, per group: each root process's label,
    its descendants as ``<label> children``, this process, and everything else."""
    if before is None or after is None:
        return None
    hertz = os.sysconf("SC_CLK_TCK")
    seconds = after.moment - before.moment
    groups: dict[int, str] = {os.getpid(): BENCH}
    groups.update(roots)
    cores: defaultdict[str, float] = defaultdict(float)
    for pid, process in after.processes.items():
        spent = process.ticks - (before.processes[pid].ticks
                                 if pid in before.processes else 0)
        if spent <= 0:
            continue
        cores[_group(pid, after.processes, groups)] += spent / hertz / seconds
    machine = (after.busy_ticks - before.busy_ticks) / hertz / seconds
    cores[OTHER] += max(0.0, machine - sum(cores.values()))
    return dict(cores)


def _group(pid: int, processes: Mapping[int, _Process], groups: Mapping[int, str]) -> str:
    ancestor, depth = pid, 0
    while ancestor in processes and depth < 64:
        if ancestor in groups:
            return groups[ancestor] if depth == 0 else f"{groups[ancestor]} children"
        ancestor, depth = processes[ancestor].parent, depth + 1
    return OTHER
