"""The process as an operator sees it: event-loop lag, memory, CPU and open file descriptors.

app.py starts LoopLag.run() as a background task; the admin API (admin/introspect.py)
reads LoopLag.percentiles() and process_stats(). Event-loop lag is the Python counterpart
of the BEAM's run queue: how late a callback scheduled for now actually runs. It is sampled
every SAMPLE_INTERVAL into a ring of the last minute, which costs one timer per sample."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections import deque

__all__ = ["LoopLag", "process_stats"]

SAMPLE_INTERVAL = 0.2  # seconds between samples: 300 per minute
WINDOW = 60.0  # seconds of samples kept


class LoopLag:
    """Event-loop lag samples of the last minute, in milliseconds, with the process's CPU time."""

    def __init__(self) -> None:
        # (loop time, lag ms, process CPU seconds)
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=int(WINDOW / SAMPLE_INTERVAL) + 1)

    async def run(self) -> None:
        """Sample forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + SAMPLE_INTERVAL
            await asyncio.sleep(SAMPLE_INTERVAL)
            now = loop.time()
            self._samples.append((now, max(0.0, now - expected) * 1000, time.process_time()))

    def percentiles(self, now: float) -> dict[str, float | None]:
        """p50, p99 and max of the lag over the last minute (`now`: the loop's clock); None
        before the first sample."""
        values = sorted(lag for at, lag, _ in self._samples if at >= now - WINDOW)
        if not values:
            return {"p50": None, "p99": None, "max": None}
        return {
            "p50": round(values[len(values) // 2], 3),
            "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))], 3),
            "max": round(values[-1], 3),
        }

    def cpu_percent(self, now: float) -> float | None:
        """The process's CPU use over the last minute, in percent of one core."""
        window = [(at, cpu) for at, _, cpu in self._samples if at >= now - WINDOW]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return None
        return round(100 * (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]), 1)


def process_stats() -> dict[str, object]:
    """pid, Python, resident memory, CPU seconds and open file descriptors of this process.

    Linux reads /proc/self; elsewhere RSS is the peak (ru_maxrss) and descriptors are unknown."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = _proc_rss()
    if rss is None:
        # ru_maxrss is KiB on Linux, bytes on macOS; it is the peak, not the current size.
        rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "rss_bytes": rss,
        "cpu_user_seconds": round(usage.ru_utime, 3),
        "cpu_system_seconds": round(usage.ru_stime, 3),
        "open_fds": fds,
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.time(),
    }


def _proc_rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
