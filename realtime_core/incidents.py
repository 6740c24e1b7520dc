"""The recent errors of each tenant, for operators: a bounded ring of incidents and counts per
code per minute, in memory.

The places where a client is refused or cut off call Incidents.record(): refused connects
(app.py), refused joins (socket.py), channel shutdowns and policy failures (channel.py),
slow consumers (socket.py, when the connection was dropped for not reading), Postgres
Changes policies that raise (postgres_changes/dispatch.py). The admin API
(admin/introspect.py) reads recent() and counts(). Codes are upstream's operational codes
(docs/protocol.md §9.3) where one exists; `SlowConsumer` is ours. Nothing here is on a
per-message path: incidents are rare, and each costs one small dict."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Incidents", "shutdown_code"]

# How many incidents each tenant keeps, and how many minutes of counts.
RING_SIZE = 200
MINUTES = 60

# Channel shutdown texts (channel.py, hub.py) that name a rate limit: upstream's code for each.
_SHUTDOWN_CODES = {
    "Too many messages per second": "MessagePerSecondRateLimitReached",
    "Too many presence messages per second": "PresenceRateLimitReached",
    "Client presence rate limit exceeded": "ClientPresenceRateLimitReached",
}


def shutdown_code(text: str) -> str:
    """The operational code of a channel shutdown with system message `text`."""
    return _SHUTDOWN_CODES.get(text, "ChannelShutdown")


class _TenantIncidents:
    __slots__ = ("minutes", "ring", "totals")

    def __init__(self) -> None:
        self.ring: deque[dict[str, Any]] = deque(maxlen=RING_SIZE)
        self.minutes: deque[tuple[int, dict[str, int]]] = deque(maxlen=MINUTES)  # (minute, {code: n})
        self.totals: dict[str, int] = {}  # since the server started


class Incidents:
    """Recent errors by tenant (external_id)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall clock, seconds
        self._tenants: dict[str, _TenantIncidents] = {}

    def record(
        self, tenant: str, code: str, reason: str, topic: str | None = None, connection: str | None = None
    ) -> None:
        """Remember one incident of `tenant` now."""
        now = self._clock()
        entry = self._tenants.get(tenant)
        if entry is None:
            entry = self._tenants[tenant] = _TenantIncidents()
        entry.ring.append({"at": now, "code": code, "reason": reason, "topic": topic, "connection": connection})
        minute = int(now // 60)
        if not entry.minutes or entry.minutes[-1][0] != minute:
            entry.minutes.append((minute, {}))
        counts = entry.minutes[-1][1]
        counts[code] = counts.get(code, 0) + 1
        entry.totals[code] = entry.totals.get(code, 0) + 1

    def recent(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's incidents, newest first; `at` in seconds since the epoch."""
        entry = self._tenants.get(tenant)
        return [] if entry is None else [dict(item) for item in reversed(entry.ring)]

    def counts(self, tenant: str) -> tuple[dict[str, int], list[tuple[int, dict[str, int]]]]:
        """Totals by code since start, and counts by code per minute (minute = epoch seconds // 60)
        over the last hour, oldest first."""
        entry = self._tenants.get(tenant)
        if entry is None:
            return {}, []
        oldest = int(self._clock() // 60) - MINUTES + 1
        return dict(entry.totals), [(m, dict(c)) for m, c in entry.minutes if m >= oldest]

    def forget(self, tenant: str) -> None:
        """Drop what is kept for a removed tenant."""
        self._tenants.pop(tenant, None)
