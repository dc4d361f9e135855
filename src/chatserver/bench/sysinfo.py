"""Process limits and readings from /proc (Linux)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLOCK_TICK_HZ = os.sysconf("SC_CLK_TCK")


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit
    (children inherit it).

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # Keep the lower limit: connecting will say if it is too low.
    return soft


@dataclass(frozen=True)
class CpuTimes:
    """A process's user and system CPU time, in clock ticks."""

    user: int
    system: int

    @property
    def ticks(self) -> int:
        return self.user + self.system

    def seconds_since(self, earlier: CpuTimes) -> float:
        """CPU seconds used between ``earlier`` and this reading."""
        return (self.ticks - earlier.ticks) / CLOCK_TICK_HZ


def cpu_times(pid: int) -> CpuTimes:
    """utime and stime of ``pid`` from ``/proc/PID/stat`` (clock ticks of
    1/``CLOCK_TICK_HZ`` s).

    @raise OSError: if the process is gone.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces and parentheses: split
    # after its closing parenthesis. utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return CpuTimes(user=int(fields[11]), system=int(fields[12]))


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid``, from ``VmRSS`` in ``/proc/PID/status``.

    @raise OSError: if the process is gone.
    """
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class MachineTimes:
    """All CPUs' busy and stolen time so far, in clock ticks, from /proc/stat."""

    busy: int
    steal: int

    @classmethod
    def read(cls) -> MachineTimes:
        with open("/proc/stat", "rb") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        # guest time is already counted in user time.
        return cls(busy=user + nice + system + irq + softirq, steal=steal)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, in the order of their ids
    (read from every ``/proc/PID/stat``, which needs no kernel option, unlike
    ``/proc/PID/task/PID/children``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # The parent's id is the second field after the command name.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)
