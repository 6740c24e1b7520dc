"""What one replication stream did with the rows it read: seen, dispatched, skipped by reason,
and commit → dispatch latency, counted in memory for the admin API (admin/replication.py).

The Postgres Changes dispatcher and the database broadcast stream each own one RowStats and
call its methods once per row or transaction: plain increments and one append to a bounded
ring, nothing per receiver."""

from __future__ import annotations

import time
from collections import deque

__all__ = ["RowStats"]

# The latencies kept for percentiles: about a minute of a busy stream, bounded memory.
_SAMPLES = 2048
PG_EPOCH_UNIX = 946_684_800  # pgoutput times count from 2000-01-01 UTC


class RowStats:
    """Counts of rows read from one slot, and a ring of recent commit → dispatch latencies."""

    __slots__ = ("_latencies", "dispatched", "last_latency_ms", "seen", "skipped")

    def __init__(self) -> None:
        self.seen = 0
        self.dispatched = 0
        self.skipped: dict[str, int] = {}
        self.last_latency_ms: float | None = None
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def dispatched_at(self, commit_time_us: int, now: float | None = None) -> None:
        """Record that a row committed at `commit_time_us` (pgoutput's clock) was just handed
        to the hub; `now` is wall-clock Unix time (default: time.time())."""
        now = time.time() if now is None else now
        ms = max(0.0, (now - PG_EPOCH_UNIX) * 1000 - commit_time_us / 1000)
        self.last_latency_ms = ms
        self._latencies.append(ms)

    def percentiles(self) -> dict[str, float | None]:
        """p50 and p99 of the recent commit → dispatch latencies in ms (None before any)."""
        if not self._latencies:
            return {"p50": None, "p99": None}
        ordered = sorted(self._latencies)
        last = len(ordered) - 1
        return {"p50": round(ordered[last // 2], 3), "p99": round(ordered[(last * 99) // 100], 3)}

    def as_dict(self) -> dict[str, object]:
        return {"seen": self.seen, "dispatched": self.dispatched, "skipped": dict(self.skipped)}
