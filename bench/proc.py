"""A process's CPU time and resident memory, read from /proc (Linux), and the open-file limit.

CPU is the process's own user + system time plus that of its live children (a server that
forks workers is counted whole); RSS is the resident set now (VmRSS), not the peak.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OPEN_FILES_WANTED = 8192
"""Enough for 1,000 held streams on each side of a server, with room for the rest."""


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(child) for child in text]
    except OSError:
        return found
    return found


def _own_cpu_s(pid: int) -> float:
    # The command name (field 2) may hold spaces: fields are counted after its closing paren.
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += _own_cpu_s(current)
        except (OSError, ValueError, IndexError):
            continue
        pending += _children(current)
    return total


def rss_kb(pid: int) -> int | None:
    """`pid`'s resident memory now plus its live descendants', in kB."""
    total, seen = 0, False
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    seen = True
        except (OSError, ValueError, IndexError):
            continue
        pending += _children(current)
    return total if seen else None


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's soft open-file limit to `wanted` (never past the hard limit, never
    lowered); children inherit it. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server this bench started, and kill it if it will not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
