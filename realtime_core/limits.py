"""Rate counters as upstream computes them (docs/protocol.md §9.2), without a clock.

Callers pass `now` (seconds, monotonic). A counter keeps the last 12 finished
5-second buckets; its average is events per second over up to the last 60 s.
A limit triggers when the average reaches it and clears when it falls below."""

from __future__ import annotations

from collections import deque

__all__ = ["BUCKET_SECONDS", "WINDOW_BUCKETS", "RateCounter", "WindowCounter"]

BUCKET_SECONDS = 5.0
WINDOW_BUCKETS = 12


class RateCounter:
    """Events per second averaged over the last minute, in 5 s buckets."""

    __slots__ = ("_bucket_start", "_buckets", "_current", "_sum", "remote")

    def __init__(self, now: float) -> None:
        # Events per second the cluster's other nodes counted, as last read (cluster/counters.py):
        # limits are reached on the cluster's total; 0 in a single process.
        self.remote = 0.0
        self._bucket_start = now
        self._current = 0
        self._buckets: deque[int] = deque(maxlen=WINDOW_BUCKETS)
        self._sum = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._bucket_start
        if elapsed < BUCKET_SECONDS:
            return
        ticks = int(elapsed // BUCKET_SECONDS)
        self._bucket_start += ticks * BUCKET_SECONDS
        for count in [self._current] + [0] * min(ticks - 1, WINDOW_BUCKETS):
            if len(self._buckets) == WINDOW_BUCKETS:
                self._sum -= self._buckets[0]
            self._buckets.append(count)
            self._sum += count
        self._current = 0

    def add(self, n: int, now: float) -> None:
        """Count n events at `now`."""
        if now - self._bucket_start >= BUCKET_SECONDS:
            self._roll(now)
        self._current += n

    def average(self, now: float) -> float:
        """Events per second over the finished buckets (0 before the first tick)."""
        self._roll(now)
        if not self._buckets:
            return 0.0
        return self._sum / len(self._buckets) / BUCKET_SECONDS

    def reached(self, limit: int, now: float) -> bool:
        """True while the average, with the other nodes', is at or above `limit` (upstream's "triggered")."""
        return self.average(now) + self.remote >= limit


class WindowCounter:
    """At most `limit` calls per window that starts at the first call (docs/protocol.md §5.3)."""

    __slots__ = ("_count", "_start")

    def __init__(self) -> None:
        self._start: float | None = None
        self._count = 0

    def allow(self, limit: int, window_s: float, now: float) -> bool:
        """Count one call; False when it is over the limit for the current window."""
        if self._start is None or now - self._start >= window_s:
            self._start, self._count = now, 0
        self._count += 1
        return self._count <= limit
