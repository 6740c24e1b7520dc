"""Per-tenant history of the server's figures, in memory, for the admin API's charts
(`GET /admin/v1/tenants/{id}/timeseries`).

app.py runs sample() once a second. It reads the counters that already exist (the hub's joins,
channel_stats.ChannelStats totals, the replication streams' row statistics and slot health)
and appends, per tenant and series, one value to a ring of the last 10 minutes of seconds;
each completed minute is also appended, averaged, to a ring of the last hour. Counters become
rates (per second); gauges (connections, lag) are kept as read. Memory per tenant is bounded:
SERIES × (600 + 60) floats."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .hub import KINDS

__all__ = ["ERRORS_PREFIX", "SECOND_POINTS", "SERIES", "WINDOWS", "TimeSeries"]

SECOND_POINTS = 600  # 10 minutes of per-second values
MINUTE_POINTS = 60  # 1 hour of per-minute values
# Counters, sampled as their increase per second.
_RATES = (
    "errors",
    "joins",
    "presence.joins",
    "presence.leaves",
    *(f"messages.{k}" for k in KINDS),
    *(f"deliveries.{k}" for k in KINDS),
    "rows.postgres_changes",
    "rows.db_broadcast",
)
# Gauges, sampled as read.
_GAUGES = (
    "connections",
    "replication_lag_bytes",
    "replication_lag_ms",
    "commit_to_dispatch_ms",
    "cluster_lag_ms",  # Redis pub/sub lag of what other processes published (cluster/broker.py)
)
SERIES: tuple[str, ...] = ("connections", *_RATES, *_GAUGES[1:])
# Refused joins per upstream error code: one counter series per code seen, made at its first error.
ERRORS_PREFIX = "errors."
# window → (seconds covered, step in seconds): up to 10 minutes per second, then per minute.
WINDOWS = {"1m": (60, 1), "5m": (300, 1), "10m": (600, 1), "30m": (1800, 60), "1h": (3600, 60)}


class SampleSource(Protocol):
    """What sample() reads of the server (app.App)."""

    tenants: Iterable[Any]  # Tenant: external_id, users
    sockets: Iterable[Any]  # RealtimeSocket: tenant
    hub: Any  # joins, presence_joins, presence_leaves: dict[tenant id, int]
    channel_stats: Any  # accepted_totals, delivered_totals: tenant → kind → int
    metrics: Any  # channel_errors: (tenant, code) → refused joins, when the metrics keep them
    services: Mapping[str, Any]  # TenantServices: cdc, db_broadcast
    cluster_broker: Any  # cluster.broker.RedisBroker with REDIS_URL: take_lag(); else None


class _Tenant:
    """The rings of one tenant, and the counter readings of the last sample."""

    __slots__ = ("last", "minute", "minute_at", "minute_count", "minute_sums", "names", "seconds", "start")

    def __init__(self) -> None:
        self.names: list[str] = list(SERIES)  # and the errors.<code> series seen so far
        self.seconds: dict[str, deque[float]] = {name: deque(maxlen=SECOND_POINTS) for name in SERIES}
        self.minute: dict[str, deque[float]] = {name: deque(maxlen=MINUTE_POINTS) for name in SERIES}
        self.last: dict[str, float] = {}
        self.minute_sums: dict[str, float] = dict.fromkeys(SERIES, 0.0)
        self.minute_count = 0
        self.minute_at = 0  # the minute (Unix time // 60) being summed
        self.start = 0  # Unix second of the newest per-second value

    def add_counter(self, name: str) -> None:
        """A new errors.<code> series: zeros for the time before its first error."""
        self.names.append(name)
        self.seconds[name] = deque([0.0] * len(self.seconds["connections"]), maxlen=SECOND_POINTS)
        self.minute[name] = deque([0.0] * len(self.minute["connections"]), maxlen=MINUTE_POINTS)
        self.minute_sums[name] = 0.0
        self.last[name] = 0.0


class TimeSeries:
    """Per-second and per-minute rings of every SERIES, per tenant."""

    def __init__(self) -> None:
        self.tenants: dict[str, _Tenant] = {}

    def sample(self, source: SampleSource, now: float) -> None:
        """Read every tenant's figures and append one value per series (`now`: Unix time)."""
        second = int(now)
        connections: dict[str, int] = {}
        for socket in source.sockets:
            tid = socket.tenant.external_id
            connections[tid] = connections.get(tid, 0) + 1
        live = set()
        for tenant in source.tenants:
            tid = tenant.external_id
            live.add(tid)
            readings = _read(source, tid)
            readings["connections"] = connections.get(tid, 0)
            self._append(tid, readings, second)
        for tid in [t for t in self.tenants if t not in live]:
            del self.tenants[tid]

    def _append(self, tid: str, readings: dict[str, float], second: int) -> None:
        rings = self.tenants.get(tid)
        if rings is None:
            rings = self.tenants[tid] = _Tenant()
            rings.last = dict.fromkeys(_RATES, 0.0)  # counters start at 0 with the process
            rings.minute_at = second // 60
        minute = second // 60
        for name in readings:
            if name not in rings.seconds:
                rings.add_counter(name)
        if minute != rings.minute_at and rings.minute_count:
            for name in rings.names:
                rings.minute[name].append(round(rings.minute_sums[name] / rings.minute_count, 3))
                rings.minute_sums[name] = 0.0
            rings.minute_count = 0
        rings.minute_at = minute
        for name in rings.names:
            value = readings.get(name, 0.0)
            if name in rings.last:  # a counter: its increase since the last sample
                value, rings.last[name] = max(0.0, value - rings.last[name]), value
            rings.seconds[name].append(value)
            rings.minute_sums[name] += value
        rings.minute_count += 1
        rings.start = second

    def window(self, tid: str, names: list[str], window: str) -> dict[str, Any]:
        """The values of `names` over `window` (a WINDOWS key), oldest first, with their times."""
        span, step = WINDOWS[window]
        rings = self.tenants.get(tid)
        points = span // step
        if rings is None:
            return {"step_seconds": step, "end": None, "count": 0, "series": {name: [] for name in names}}
        source = rings.seconds if step == 1 else rings.minute
        count = min(points, len(source["connections"]))
        # An errors.<code> series without any error yet is all zeros.
        series = {name: list(source[name])[-points:] if name in source else [0.0] * count for name in names}
        end = rings.start if step == 1 else rings.minute_at * 60 - 60  # the last complete minute
        return {"step_seconds": step, "end": end, "count": count, "series": series}

    def names(self, tid: str) -> list[str]:
        """The series of tenant `tid`: SERIES and its errors.<code> series."""
        rings = self.tenants.get(tid)
        return list(SERIES) if rings is None else list(rings.names)


def _read(source: SampleSource, tid: str) -> dict[str, float]:
    hub = source.hub
    readings: dict[str, float] = {
        "joins": hub.joins.get(tid, 0),
        "presence.joins": hub.presence_joins.get(tid, 0),
        "presence.leaves": hub.presence_leaves.get(tid, 0),
    }
    accepted = source.channel_stats.accepted_totals.get(tid, {})
    delivered = source.channel_stats.delivered_totals.get(tid, {})
    for kind in KINDS:
        readings[f"messages.{kind}"] = accepted.get(kind, 0)
        readings[f"deliveries.{kind}"] = delivered.get(kind, 0)
    errors = 0
    for (tenant, code), count in getattr(source.metrics, "channel_errors", {}).items():
        if tenant == tid:
            readings[ERRORS_PREFIX + code] = count
            errors += count
    readings["errors"] = errors
    cluster = getattr(source, "cluster_broker", None)
    if cluster is not None:
        readings["cluster_lag_ms"] = cluster.take_lag(tid)
    services = source.services.get(tid)
    cdc = getattr(services, "cdc", None)
    stream = getattr(services, "db_broadcast", None)
    if cdc is not None:
        rows = cdc.dispatcher.rows
        readings["rows.postgres_changes"] = rows.dispatched
        readings["replication_lag_bytes"] = cdc.slot_health.get("lag_bytes") or 0
        readings["replication_lag_ms"] = rows.last_latency_ms or 0.0
        readings["commit_to_dispatch_ms"] = rows.last_latency_ms or 0.0
    if stream is not None:
        readings["rows.db_broadcast"] = stream.rows.dispatched
        if stream.rows.last_latency_ms is not None:
            readings["commit_to_dispatch_ms"] = max(
                readings.get("commit_to_dispatch_ms", 0.0), stream.rows.last_latency_ms
            )
    return readings
