"""What the kernel says about processes and cores, read from /proc.

Every benchmark takes a Snapshot at the start and at the end of each
measured window (the load generator prints a mark at each) and compares the
two with Snapshot.usage(): the server's CPU, each core's busy time, and the
CPU that processes outside the bench used meanwhile. The machine is shared
with other work, so that last figure says how much to trust a window.
raise_nofile() lifts the open-files limit first: a bench opens thousands of
sockets."""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Iterable

__all__ = ["ProcessTree", "Snapshot", "listener_pid", "raise_nofile", "rss_kb"]

_TICK = os.sysconf("SC_CLK_TCK")  # jiffies per second, usually 100


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to its hard limit, for us and every child; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    """Return VmRSS of `pid` in KB (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """Return (comm, ppid, utime + stime) of one process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'
    close = raw.rfind(b")")
    comm = raw[raw.find(b"(") + 1 : close].decode("utf-8", "replace")
    fields = raw[close + 2 :].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def _all_processes() -> dict[int, tuple[str, int, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(name)
            if st is not None:
                out[int(name)] = st
    return out


def _cores() -> dict[str, tuple[int, int]]:
    """Return {cpuN: (busy, total)} jiffies from /proc/stat; softirq counts as busy."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, vals[:8])
                busy = user + nice + system + irq + softirq + steal
                out[name] = (busy, busy + idle + iowait)
    return out


@dataclasses.dataclass
class ProcessTree:
    """A process whose CPU is measured, with its descendants counted apart."""

    pid: int

    def members(self, procs: dict[int, tuple[str, int, int]]) -> set[int]:
        """Return the pid and every descendant found in `procs`."""
        tree = {self.pid}
        grew = True
        while grew:
            grew = False
            for pid, (_comm, ppid, _ticks) in procs.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        return tree


@dataclasses.dataclass
class Snapshot:
    """CPU counters of every process and core at one instant."""

    t: float
    procs: dict[int, tuple[str, int, int]]
    cores: dict[str, tuple[int, int]]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(time.monotonic(), _all_processes(), _cores())

    def usage(
        self,
        end: Snapshot,
        *,
        servers: dict[str, ProcessTree],
        generator: ProcessTree | None,
        ignore: Iterable[int] = (),
    ) -> dict[str, object]:
        """Compare with a later snapshot; CPU figures are % of one core.

        Returns, for each name in `servers`, `<name>_cpu_pct` (the process
        itself) and `<name>_children_cpu_pct` (its descendants, e.g. an
        embedded PostgreSQL); `core_busy_pct` per core; and `foreign_cpu_pct`,
        the CPU of every other process except `ignore`, with the top three.
        """
        wall = max(end.t - self.t, 1e-9)

        def pct(ticks: int) -> float:
            return round(100.0 * ticks / _TICK / wall, 1)

        def delta(pid: int) -> int:
            after = end.procs.get(pid)
            if after is None:
                return 0
            before = self.procs.get(pid)
            return after[2] - (before[2] if before is not None else 0)

        out: dict[str, object] = {}
        known: set[int] = set(ignore)
        for name, tree in servers.items():
            members = tree.members(end.procs)
            known |= members
            out[f"{name}_cpu_pct"] = pct(delta(tree.pid))
            out[f"{name}_children_cpu_pct"] = pct(sum(delta(p) for p in members - {tree.pid}))
        if generator is not None:
            known |= generator.members(end.procs)
        foreign = sorted(
            ((delta(pid), pid) for pid in end.procs if pid not in known),
            reverse=True,
        )
        out["foreign_cpu_pct"] = pct(sum(d for d, _ in foreign))
        out["foreign_top"] = [f"{end.procs[pid][0]}[{pid}] {pct(d)}%" for d, pid in foreign[:3] if d > 0]
        cores = {}
        for name, (busy, total) in end.cores.items():
            b0, t0 = self.cores.get(name, (busy, total))
            cores[name] = round(100.0 * (busy - b0) / max(total - t0, 1), 1)
        out["core_busy_pct"] = cores
        return out


def listener_pid(port: int) -> int | None:
    """Return the pid of the process listening on TCP `port` (IPv4 or IPv6), if any.

    A server started through wrappers (taskset, a pyenv shim, a shell) is not
    always the process that Popen returned: the socket says which one it is.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except FileNotFoundError:
            continue
    if not inodes:
        return None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                if os.readlink(f"/proc/{name}/fd/{fd}") in inodes:
                    return int(name)
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return None
