"""What the kernel says about a process: CPU time and memory, read from ``/proc``.

The benchmark and the tests read the operator's own cost from outside the process,
so that measuring does not add to it: CPU seconds are ``utime + stime`` from
``/proc/PID/stat``, memory is ``VmHWM`` (the peak resident set) and ``VmRSS`` from
``/proc/PID/status``.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


def memory_bytes(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak RSS) and ``VmRSS`` (current RSS) in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024  # reported in kB
    return out


def cores() -> dict[str, int]:
    """Online CPUs, and the ones this process may run on."""
    return {
        "online": os.cpu_count() or 0,
        "usable": len(os.sched_getaffinity(0)),
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def reset_peak(pid: int) -> None:
    """Start ``VmHWM`` afresh from the current RSS (Linux ``clear_refs`` value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
