"""Usage metering: messages and egress bytes by tenant, UTC hour and kind, and peak connections,
counted in memory and flushed to the server's database; quota status and the 80 % / 100 % alerts.

Egress is every byte written to a client: the WebSocket frames of a fan-out (the hub reports
count × frame length per codec), the frames sent to one subscriber (presence_state, replay), the
socket's own frames (`protocol`: replies, heartbeats, system messages, phx_close, pongs, close
frames and the HTTP 101 answer, reported by the socket through egress()) and REST broadcast
responses (`rest`, reported by rest_api.py). Kinds are the messages' origins (hub.KINDS) plus
`protocol`; the bytes of each kind wait beside its messages and are stored in
`_realtime.usage_egress` (sql/0010_egress.sql) by the same flush.

The Hub tallies every message accepted from a sender, every publication delivered and the
frames a channel sends outside a fan-out (`presence_state` at join, replayed messages), per
stream, kind and second, and hands the tallies over (hub.TallyReader: absorb()) once a second
and before every read here; the socket reports each connect and disconnect of a WebSocket
(connected() / disconnected()). What counts is the README's table ("Usage and quotas").

Hot path: nothing here per publication (the hub's tally), a few additions per stream and
second; no I/O. A second's tally goes to the UTC hour in which that second of the hub's clock
started. Counts wait in `_unflushed`, by (tenant, epoch hour), until flush() adds them
to `_realtime.usage` (sql/0009_usage.sql) in one transaction: a failed flush puts them back, so a
database outage loses nothing, and a flush runs beside delivery, never in its way. Rows are
upserted by adding, so restarts and several processes add up; peaks are merged with greatest().

App.start() calls start() (cycle totals, then a flush every `interval` seconds); App.stop()
calls flush() once more after the sockets closed, before the pool closes."""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .attribution import (
    POSTGRES_CHANGES_SLOT,
    PRESENCE_SLOT,
    PRESENCE_STATE_SLOT,
    AttributedSocket,
    Attribution,
)
from .hub import DB_BROADCAST_KIND, KINDS, POSTGRES_CHANGES_KIND, PRESENCE_KIND

if TYPE_CHECKING:
    from .hub import Tallies
    from .tenants import Tenant

__all__ = [
    "EGRESS_KINDS",
    "PROTOCOL_KIND",
    "THRESHOLDS",
    "ClusterConnections",
    "Cycle",
    "UsageMeter",
    "billing_cycle",
    "hour_of",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # wall time, seconds since the epoch (UTC)
# Counted and not yet stored: messages by (tenant, epoch hour) and kind; peaks by (tenant, epoch hour);
# egress bytes by (tenant, epoch hour) and kind.
_Counts = dict[tuple[str, int], dict[str, int]]
_Pending = tuple[_Counts, dict[tuple[str, int], int], _Counts]

# Egress kinds: the messages' origins, and the socket's own frames (replies, heartbeats, system
# messages, phx_close, pongs, close frames, the HTTP 101 answer).
PROTOCOL_KIND = "protocol"
EGRESS_KINDS = (*KINDS, PROTOCOL_KIND)
# Where attribution keeps the kinds advice reads, per kind of delivery (and of frames sent alone).
_DELIVERY_SLOTS = {PRESENCE_KIND: PRESENCE_SLOT, POSTGRES_CHANGES_KIND: POSTGRES_CHANGES_SLOT}
_SENT_SLOTS = {PRESENCE_KIND: PRESENCE_STATE_SLOT}

THRESHOLDS = (80, 100)  # percent of a quota: crossing each is logged, counted and POSTed once per cycle
_EPOCH = date(1970, 1, 1).toordinal()
# A quiet stretch between two connects or flushes whose hours are filled in with the connections
# still open: at most a month of hours (a longer gap means the process was not running).
_MAX_GAP_HOURS = 31 * 24
# Pauses before each retry of an alert webhook (s): five attempts over about 15 s.
WEBHOOK_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
_WEBHOOK_TIMEOUT = 10.0


def hour_of(t: float) -> int:
    """The epoch hour (hours since 1970-01-01 00:00 UTC) of wall time `t`."""
    return int(t // 3600)


def day_of_hour(hour: int) -> date:
    return date.fromordinal(_EPOCH + hour // 24)


@dataclass(frozen=True, slots=True)
class Cycle:
    """A billing cycle: from `start` (included) to `end` (excluded), UTC days."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year = day.year + month // 12
    month = month % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def billing_cycle(today: date, cycle_day: int) -> Cycle:
    """The billing cycle holding `today` for a tenant whose cycles start on day `cycle_day` (1..28)
    of each month, UTC."""
    start = date(today.year, today.month, cycle_day)
    if today.day < cycle_day:
        start = _add_months(start, -1)
    return Cycle(start, _add_months(start, 1))


class ClusterConnections(Protocol):
    """The cluster's count of connections (cluster/counters.py): told of each connect and
    disconnect here, it answers with the cluster total through UsageMeter.cluster_total()."""

    def connected(self, tenant_id: str) -> None: ...

    def disconnected(self, tenant_id: str) -> None: ...


class _Connections:
    """The open WebSockets of one tenant and the peak of the current hour.

    `open` counts this process's; `total` the cluster's (as last heard, in a cluster; else `open`)."""

    __slots__ = ("hour", "open", "peak", "total")

    def __init__(self, hour: int) -> None:
        self.open = 0
        self.total = 0
        self.hour = hour
        self.peak = 0


class UsageMeter:
    """Counts one process's usage in memory and keeps it in the server's database.

    Attributes the metrics read: `flushes`, `flush_failures`, `alerts` ({(metric, threshold):
    crossings}), `webhooks_sent`, `webhook_failures`."""

    def __init__(self, clock: Clock = time.time, *, interval: float = 10.0, enabled: bool = True) -> None:
        self.clock = clock
        self.interval = interval
        self.enabled = enabled  # False: messages are not counted (connections still are)
        self._hour_end = 0.0  # wall time at which the current hour ends
        self._hour = -1
        # (tenant, epoch hour) → kind → messages, not yet in the database.
        self._unflushed: dict[tuple[str, int], dict[str, int]] = {}
        self._flushing: dict[tuple[str, int], dict[str, int]] | None = None
        # The same for egress bytes, by kind (EGRESS_KINDS).
        self._egress: _Counts = {}
        # tenant → the _egress entry of the current hour (egress()'s one lookup per frame).
        self._egress_current: dict[str, dict[str, int]] = {}
        self._flushing_egress: _Counts | None = None
        # Per topic, client and role (attribution.py): in memory, for this process.
        self.attribution = Attribution()
        self._attributed_day = -1
        self._connections: dict[str, _Connections] = {}
        # (tenant, epoch hour) → peak connections, not yet in the database.
        self._peaks: dict[tuple[str, int], int] = {}
        self._flushing_peaks: dict[tuple[str, int], int] | None = None
        # tenant → (cycle start, messages, peak connections) in the database at the last flush.
        # tenant → (cycle start, messages, peak connections, egress bytes) at the last flush.
        self._stored: dict[str, tuple[date, int, int, int]] = {}
        self._alerted: set[tuple[str, date, str, int]] = set()
        self._lock = asyncio.Lock()  # one flush or live read at a time
        self.settle: Callable[[], None] = _nothing  # hands over the hub's tallies (Hub.attach() sets it)
        # Set in a cluster: peaks are then the cluster's totals (cluster_total()), not this process's.
        self.cluster: ClusterConnections | None = None
        self.pool: AsyncConnectionPool | None = None
        self.tenants: Callable[[], Iterable[Tenant]] = tuple
        # The open sockets (the App's): attribution moves their traffic to each new day.
        self.sockets: Callable[[], Iterable[AttributedSocket]] = tuple
        self.spawn: Callable[..., Any] | None = None
        self.flushes = 0
        self.flush_failures = 0
        self.alerts: dict[tuple[str, int], int] = {}
        self.webhooks_sent = 0
        self.webhook_failures = 0

    # Counting (hub.TallyReader and the sessions): in memory only

    def absorb(self, tallies: Tallies, second: int, now: float) -> None:
        """The hub's tallies of `second`, handed over at `now` (both on the hub's clock, `now`
        being this meter's clock() now), counted in the UTC hour that second started in.
        Messages: those accepted from senders (a message the database sends, realtime.send or
        broadcast_changes, counts only as it is delivered), the frames queued by fan-outs and
        those sent to one subscriber (presence_state, replay); egress: the bytes of both."""
        if not self.enabled:
            return
        hour = hour_of(self.clock() - (now - second))
        for (key, kind), tally in tallies.items():
            tid = key.tenant
            accepted = tally.accepted if kind != DB_BROADCAST_KIND else 0
            messages = accepted + tally.deliveries + tally.sent
            if not messages:
                continue
            _add(self._unflushed, (tid, hour), KINDS, kind, messages)
            nbytes = tally.nbytes + tally.sent_bytes
            if nbytes:
                _add(self._egress, (tid, hour), EGRESS_KINDS, kind, nbytes)
            table = self.attribution.table(tid, hour)
            if accepted:
                table.add(key.sub_topic, key.private, accepted, 0, PRESENCE_SLOT if kind == PRESENCE_KIND else 0)
            if tally.deliveries:
                table.add(key.sub_topic, key.private, tally.deliveries, tally.nbytes, _DELIVERY_SLOTS.get(kind, 0))
            if tally.sent:
                table.add(key.sub_topic, key.private, tally.sent, tally.sent_bytes, _SENT_SLOTS.get(kind, 0))

    def egress(self, tenant_id: str, kind: str, nbytes: int, topic: str, private: bool = False) -> None:
        """`nbytes` of `kind` were written to a client outside the hub: the socket's own frames
        (PROTOCOL_KIND) on `topic` (its channel's, or "phoenix" for the socket's), or a REST
        response (REST_KIND, topic attribution.REST_TOPIC)."""
        if nbytes and self.enabled:
            self._egress_count(tenant_id, kind, nbytes)
            self.attribution.topic(tenant_id, topic, private, 0, nbytes, self._hour)

    def _egress_count(self, tenant_id: str, kind: str, nbytes: int) -> None:
        if self.clock() >= self._hour_end:
            self._roll()
        try:
            self._egress_current[tenant_id][kind] += nbytes
        except KeyError:
            self._egress_counts(tenant_id)[kind] += nbytes

    def _roll(self) -> None:
        """A new hour: later counts go to new entries (the closed hour's wait for the flush)."""
        now = self.clock()
        self._hour = hour_of(now)
        self._hour_end = (self._hour + 1) * 3600.0
        self._egress_current = {}

    def _egress_counts(self, tenant_id: str) -> dict[str, int]:
        """The egress of `tenant_id` for the current hour, created at its first byte."""
        key = (tenant_id, self._hour)
        counts = self._egress.get(key)
        if counts is None:
            counts = self._egress[key] = dict.fromkeys(EGRESS_KINDS, 0)
        self._egress_current[tenant_id] = counts
        return counts

    def connected(self, tenant: Tenant) -> None:
        """A WebSocket upgrade of `tenant` succeeded."""
        conns = self._connections_of(tenant.external_id)
        conns.open += 1
        if self.cluster is None:
            conns.total = conns.open
            self._saw(tenant.external_id, conns)
        else:
            self.cluster.connected(tenant.external_id)

    def disconnected(self, tenant: Tenant) -> None:
        """A WebSocket of `tenant` that connected() counted has closed."""
        conns = self._connections_of(tenant.external_id)
        conns.open -= 1
        if self.cluster is None:
            conns.total = conns.open
        else:
            self.cluster.disconnected(tenant.external_id)

    def cluster_total(self, tenant_id: str, total: int) -> None:
        """The cluster had `total` connections of `tenant_id` right after one of this process's
        connects or disconnects (cluster/counters.py): the cluster's peak is the highest of these."""
        conns = self._connections_of(tenant_id)
        conns.total = total
        self._saw(tenant_id, conns)

    def _saw(self, tenant_id: str, conns: _Connections) -> None:
        if conns.total > conns.peak:
            conns.peak = conns.total
            key = (tenant_id, conns.hour)
            if self._peaks.get(key, 0) < conns.peak:
                self._peaks[key] = conns.peak

    def _connections_of(self, tenant_id: str) -> _Connections:
        """The tenant's connections, moved to the current hour: a new hour starts from the
        connections open at that moment, and so does every hour of a quiet gap."""
        hour = hour_of(self.clock())
        conns = self._connections.get(tenant_id)
        if conns is None:
            conns = self._connections[tenant_id] = _Connections(hour)
        elif conns.hour != hour:
            if conns.total:
                for gap in range(max(conns.hour + 1, hour - _MAX_GAP_HOURS), hour + 1):
                    key = (tenant_id, gap)
                    if self._peaks.get(key, 0) < conns.total:
                        self._peaks[key] = conns.total
            conns.hour = hour
            conns.peak = conns.total
        return conns

    def socket_opened(self, socket: AttributedSocket) -> None:
        """A socket attached: attribution by client and role starts from its counters now."""
        self.attribution.start(socket, hour_of(self.clock()) // 24)

    def socket_closed(self, socket: AttributedSocket) -> None:
        """A socket closed: its traffic is attributed to its client and role."""
        self.roll_attribution()
        self.attribution.closed(socket)

    def roll_attribution(self) -> None:
        """Attribute the open sockets' traffic to the day that ends, once a new day started."""
        today = hour_of(self.clock()) // 24
        if today != self._attributed_day:
            self._attributed_day = today
            self.attribution.roll(self.sockets(), today)

    def open_connections(self, tenant_id: str) -> int:
        conns = self._connections.get(tenant_id)
        return conns.open if conns is not None else 0

    # What is counted and not yet stored (the live part of every answer)

    def _pending(self) -> _Pending:
        """Messages and peaks counted and not yet committed: waiting, and being flushed."""
        self.settle()
        for tenant_id in list(self._connections):
            self._connections_of(tenant_id)  # quiet hours with open sockets get their peak
        peaks: dict[tuple[str, int], int] = {}
        for source in (self._flushing_peaks, self._peaks):
            for key, peak in (source or {}).items():
                peaks[key] = max(peaks.get(key, 0), peak)
        return (
            _merged((self._flushing, self._unflushed), KINDS),
            peaks,
            _merged((self._flushing_egress, self._egress), EGRESS_KINDS),
        )

    # Persistence

    def start(
        self,
        pool: AsyncConnectionPool,
        tenants: Callable[[], Iterable[Tenant]],
        spawn: Callable[..., Any],
    ) -> None:
        """Keep the usage in `pool`'s database from now on: a flush every `interval` seconds,
        run by `spawn` (the App's supervisor, which cancels it at stop)."""
        self.pool = pool
        self.tenants = tenants
        self.spawn = spawn
        spawn(self._flush_forever(), name="usage flush")

    async def _flush_forever(self) -> None:
        while True:
            try:
                await self.flush()
            except Exception:
                log.exception("usage: flush failed unexpectedly")  # kept, and tried again
            await asyncio.sleep(self.interval)

    async def flush(self) -> bool:
        """Add what was counted since the last flush to the database, then read every tenant's
        cycle totals and send the alerts they cross. False when the database failed: the
        counts are kept for the next flush."""
        pool = self.pool
        if pool is None:
            return False
        async with self._lock:
            self.settle()
            for tenant_id in list(self._connections):
                self._connections_of(tenant_id)
            self.roll_attribution()
            self._flushing, self._unflushed = self._unflushed, {}
            self._flushing_egress, self._egress, self._egress_current = self._egress, {}, {}
            self._flushing_peaks, self._peaks = self._peaks, {}
            try:
                async with pool.connection() as conn, conn.transaction():
                    await _store(conn, self._flushing, self._flushing_peaks)
                    await _store_egress(conn, self._flushing_egress)
                    totals = await self._read_cycles(conn)
            except BaseException as exc:
                self._restore()
                if isinstance(exc, Exception):
                    self.flush_failures += 1
                    log.warning("usage: flush failed, %d entries kept for the next one: %s", len(self._unflushed), exc)
                    return False
                raise
            self._flushing = self._flushing_peaks = self._flushing_egress = None
            self._stored = totals
            self.flushes += 1
        await self._check_alerts()
        return True

    def _restore(self) -> None:
        """Put the counts of a failed flush back, beside those counted meanwhile."""
        for flushing, unflushed in ((self._flushing, self._unflushed), (self._flushing_egress, self._egress)):
            for key, counts in (flushing or {}).items():
                into = unflushed.get(key)
                if into is None:
                    unflushed[key] = counts
                else:
                    for kind, n in counts.items():
                        into[kind] += n
        self._egress_current = {}  # egress() finds the current hour's entries again
        for key, peak in (self._flushing_peaks or {}).items():
            self._peaks[key] = max(self._peaks.get(key, 0), peak)
        self._flushing = self._flushing_peaks = self._flushing_egress = None

    async def _read_cycles(self, conn: Any) -> dict[str, tuple[date, int, int, int]]:
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        starts = {t.external_id: billing_cycle(today, t.billing_cycle_day).start for t in self.tenants()}
        if not starts:
            return {}
        cur = await conn.execute(
            "select c.tenant, c.start,"
            " (select coalesce(sum(u.messages), 0) from _realtime.usage u"
            "   where u.tenant = c.tenant and u.day >= c.start)::bigint,"
            " (select coalesce(max(p.peak_connections), 0) from _realtime.usage_peaks p"
            "   where p.tenant = c.tenant and p.day >= c.start)::bigint,"
            " (select coalesce(sum(e.bytes), 0) from _realtime.usage_egress e"
            "   where e.tenant = c.tenant and e.day >= c.start)::bigint"
            " from unnest(%s::text[], %s::date[]) as c(tenant, start)",
            (list(starts), list(starts.values())),
        )
        return {row[0]: row[1:] for row in await cur.fetchall()}

    # Reading

    async def read(self, tenant_id: str, first: date, last: date, *, hourly: bool) -> list[dict[str, Any]]:
        """Usage of `tenant_id` from day `first` to day `last` (both included), stored and not
        yet stored: one row per day (or hour, `hourly`) that has any, in order:
        {"day": date, "hour": int | None, "messages": {kind: n}, "peak_connections": n,
        "egress_bytes": {kind: n}} (egress kinds: EGRESS_KINDS)."""
        buckets: dict[tuple[date, int | None], dict[str, Any]] = {}

        def bucket(day: date, hour: int) -> dict[str, Any]:
            key = (day, hour if hourly else None)
            row = buckets.get(key)
            if row is None:
                row = buckets[key] = {
                    "day": day,
                    "hour": key[1],
                    "messages": dict.fromkeys(KINDS, 0),
                    "peak_connections": 0,
                    "egress_bytes": dict.fromkeys(EGRESS_KINDS, 0),
                }
            return row

        async with self._lock:
            if self.pool is not None:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(
                        "select day, hour, kind, messages from _realtime.usage"
                        " where tenant = %s and day between %s and %s",
                        (tenant_id, first, last),
                    )
                    for day, hour, kind, n in await cur.fetchall():
                        if kind in KINDS:
                            bucket(day, hour)["messages"][kind] += n
                    cur = await conn.execute(
                        "select day, hour, peak_connections from _realtime.usage_peaks"
                        " where tenant = %s and day between %s and %s",
                        (tenant_id, first, last),
                    )
                    for day, hour, peak in await cur.fetchall():
                        row = bucket(day, hour)
                        row["peak_connections"] = max(row["peak_connections"], peak)
                    cur = await conn.execute(
                        "select day, hour, kind, bytes from _realtime.usage_egress"
                        " where tenant = %s and day between %s and %s",
                        (tenant_id, first, last),
                    )
                    for day, hour, kind, n in await cur.fetchall():
                        if kind in EGRESS_KINDS:
                            bucket(day, hour)["egress_bytes"][kind] += n
            messages, peaks, egress = self._pending()
        for (tenant, hour), counts in messages.items():
            day = day_of_hour(hour)
            if tenant == tenant_id and first <= day <= last:
                into = bucket(day, hour % 24)["messages"]
                for kind, n in counts.items():
                    into[kind] += n
        for (tenant, hour), peak in peaks.items():
            day = day_of_hour(hour)
            if tenant == tenant_id and first <= day <= last:
                row = bucket(day, hour % 24)
                row["peak_connections"] = max(row["peak_connections"], peak)
        for (tenant, hour), counts in egress.items():
            day = day_of_hour(hour)
            if tenant == tenant_id and first <= day <= last:
                into = bucket(day, hour % 24)["egress_bytes"]
                for kind, n in counts.items():
                    into[kind] += n
        return [buckets[key] for key in sorted(buckets, key=lambda k: (k[0], k[1] or 0))]

    async def egress_bytes(self, tenant_id: str, start_day: date, end_day: date) -> int:
        """Egress of `tenant_id` from UTC day `start_day` (included) to `end_day` (excluded), all
        kinds, live: what the database holds plus what this process counted and has not stored.
        A billing cycle is egress_bytes(t, cycle.start, cycle.end)."""
        if end_day <= start_day:
            return 0
        rows = await self.read(tenant_id, start_day, date.fromordinal(end_day.toordinal() - 1), hourly=False)
        return sum(sum(row["egress_bytes"].values()) for row in rows)

    def cycle(self, tenant: Tenant) -> Cycle:
        """The tenant's current billing cycle."""
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        return billing_cycle(today, tenant.billing_cycle_day)

    def cycle_usage(self, tenant: Tenant, pending: _Pending | None = None) -> tuple[int, int]:
        """Messages and peak connections of the tenant's current cycle, live: the database's
        totals at the last flush plus what this process counted since (`pending`: _pending(),
        when the caller asks for many tenants)."""
        cycle = self.cycle(tenant)
        tenant_id = tenant.external_id
        stored = self._stored.get(tenant_id)
        messages, peak = (stored[1], stored[2]) if stored is not None and stored[0] == cycle.start else (0, 0)
        pending_messages, pending_peaks, _ = pending or self._pending()
        for (tid, hour), counts in pending_messages.items():
            if tid == tenant_id and day_of_hour(hour) >= cycle.start:
                messages += sum(counts.values())
        for (tid, hour), value in pending_peaks.items():
            if tid == tenant_id and day_of_hour(hour) >= cycle.start:
                peak = max(peak, value)
        return messages, peak

    def cycle_egress(self, tenant: Tenant, pending: _Pending | None = None) -> int:
        """Egress bytes (all kinds) of the tenant's current cycle, live, as cycle_usage() counts
        messages: the database's total at the last flush plus what was counted since."""
        cycle = self.cycle(tenant)
        tenant_id = tenant.external_id
        stored = self._stored.get(tenant_id)
        egress = stored[3] if stored is not None and stored[0] == cycle.start else 0
        _, _, pending_egress = pending or self._pending()
        for (tid, hour), counts in pending_egress.items():
            if tid == tenant_id and day_of_hour(hour) >= cycle.start:
                egress += sum(counts.values())
        return egress

    def quota(self, tenant: Tenant, pending: _Pending | None = None) -> dict[str, dict[str, Any]]:
        """The tenant's quota status in its current cycle: {"messages": {"used", "included",
        "percent"}, "peak_connections": {...}, "egress_bytes": {...}} (percent of the plan's
        included quantity; egress's `included` is the plan's `included_egress_bytes`, 0 while
        plans.py has none, which sends no alert)."""
        pending = pending or self._pending()
        messages, peak = self.cycle_usage(tenant, pending)
        plan = tenant.plan
        return {
            "messages": _status(messages, plan.included_messages),
            "peak_connections": _status(peak, plan.included_peak_connections),
            "egress": _status(self.cycle_egress(tenant, pending), plan.included_egress_bytes),
        }

    def messages_exhausted(self, tenant: Tenant) -> bool:
        """True when the tenant used every message its plan includes this cycle."""
        messages, _ = self.cycle_usage(tenant)
        return messages >= tenant.plan.included_messages

    # Alerts

    async def _check_alerts(self) -> None:
        """Log, count and POST each threshold a tenant's quota crossed, once per cycle: the
        database remembers what was sent (`_realtime.usage_alerts`), across restarts and
        processes."""
        pending = self._pending()
        for tenant in self.tenants():
            quota = self.quota(tenant, pending)
            cycle = self.cycle(tenant)
            for metric, status in quota.items():
                used, included = status["used"], status["included"]
                for threshold in THRESHOLDS:
                    key = (tenant.external_id, cycle.start, metric, threshold)
                    # Exact: the rounded percent of 1,599,999 of 2M reads 80.0.
                    if included <= 0 or used * 100 < threshold * included or key in self._alerted:
                        continue
                    claimed = await self._claim_alert(key)
                    if claimed is None:
                        continue  # the database failed: tried again at the next flush
                    self._alerted.add(key)
                    if not claimed:
                        continue  # sent before (by this process before a restart, or another)
                    self.alerts[(metric, threshold)] = self.alerts.get((metric, threshold), 0) + 1
                    log.warning(
                        "QuotaThresholdCrossed: tenant %s used %s%% of its %s (%s of %s) in the cycle from %s",
                        tenant.external_id,
                        status["percent"],
                        metric,
                        status["used"],
                        status["included"],
                        cycle.start,
                    )
                    if tenant.alert_webhook_url and self.spawn is not None:
                        body = _alert_body(tenant, cycle, metric, threshold, status, self.clock())
                        self.spawn(self._post_alert(tenant.alert_webhook_url, body), name="usage alert")

    async def _claim_alert(self, key: tuple[str, date, str, int]) -> bool | None:
        """Record the alert `key`; False when it was already recorded (sent before), None when
        the database failed."""
        if self.pool is None:
            return None
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    "insert into _realtime.usage_alerts (tenant, cycle_start, metric, threshold)"
                    " values (%s, %s, %s, %s) on conflict do nothing",
                    key,
                )
                return cur.rowcount == 1
        except Exception as exc:
            log.warning("usage: could not record an alert, tried again at the next flush: %s", exc)
            return None

    async def _post_alert(self, url: str, body: bytes) -> None:
        """POST one alert, retrying with growing pauses while it fails."""
        for attempt, delay in enumerate((0.0, *WEBHOOK_RETRY_DELAYS)):
            await asyncio.sleep(delay)
            try:
                status = await asyncio.to_thread(_post, url, body)
            except Exception as exc:
                log.warning("usage: alert webhook attempt %d failed: %s", attempt + 1, exc)
                continue
            if 200 <= status < 300:
                self.webhooks_sent += 1
                return
            log.warning("usage: alert webhook attempt %d answered %d", attempt + 1, status)
        self.webhook_failures += 1
        log.error("usage: alert webhook %s failed %d times; not sent", url, len(WEBHOOK_RETRY_DELAYS) + 1)


def _add(counts: _Counts, key: tuple[str, int], kinds: tuple[str, ...], kind: str, n: int) -> None:
    by_kind = counts.get(key)
    if by_kind is None:
        by_kind = counts[key] = dict.fromkeys(kinds, 0)
    by_kind[kind] += n


def _nothing() -> None:
    """settle() until Hub.attach() sets it."""


def _merged(sources: Iterable[_Counts | None], kinds: tuple[str, ...]) -> _Counts:
    """The counts of `sources` added up by (tenant, hour) and kind."""
    merged: _Counts = {}
    for source in sources:
        for key, counts in (source or {}).items():
            into = merged.setdefault(key, dict.fromkeys(kinds, 0))
            for kind, n in counts.items():
                into[kind] += n
    return merged


def _status(used: int, included: int) -> dict[str, Any]:
    percent = round(used * 100 / included, 2) if included > 0 else None
    return {"used": used, "included": included, "percent": percent}


def _alert_body(tenant: Tenant, cycle: Cycle, metric: str, threshold: int, status: dict[str, Any], now: float) -> bytes:
    return orjson.dumps(
        {
            "type": "quota_threshold_crossed",
            "tenant": tenant.external_id,
            "organization": tenant.organization,
            "plan": tenant.plan.name,
            "metric": metric,
            "threshold": threshold,
            **status,
            "cycle": {"start": cycle.start.isoformat(), "end": cycle.end.isoformat()},
            "at": datetime.fromtimestamp(now, UTC).isoformat(),
        }
    )


def _post(url: str, body: bytes) -> int:
    """POST `body` as JSON to `url` (blocking: run in a thread); the HTTP status."""
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"alert_webhook_url must be an http(s) URL, got {url[:40]!r}")  # urllib also opens file:
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=_WEBHOOK_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def _store(conn: Any, messages: dict[tuple[str, int], dict[str, int]], peaks: dict[tuple[str, int], int]) -> None:
    """Add `messages` to `_realtime.usage` and merge `peaks` into `_realtime.usage_peaks`."""
    await _add_counts(conn, "usage", "messages", messages)
    if peaks:
        keys = list(peaks)
        await conn.execute(
            "insert into _realtime.usage_peaks as p (tenant, day, hour, peak_connections)"
            " select * from unnest(%s::text[], %s::date[], %s::smallint[], %s::bigint[])"
            " on conflict (tenant, day, hour)"
            " do update set peak_connections = greatest(p.peak_connections, excluded.peak_connections)",
            (
                [t for t, _ in keys],
                [day_of_hour(h) for _, h in keys],
                [h % 24 for _, h in keys],
                [peaks[k] for k in keys],
            ),
        )


async def _store_egress(conn: Any, egress: _Counts) -> None:
    """Add `egress` to `_realtime.usage_egress`."""
    await _add_counts(conn, "usage_egress", "bytes", egress)


async def _add_counts(conn: Any, table: str, column: str, counts: dict[tuple[str, int], dict[str, int]]) -> None:
    """Add `counts` ((tenant, epoch hour) → kind → n) to `_realtime.<table>`'s `column`, by
    (tenant, day, hour, kind), in one statement."""
    rows = [
        (t, day_of_hour(h), h % 24, kind, n) for (t, h), by_kind in counts.items() for kind, n in by_kind.items() if n
    ]
    if not rows:
        return
    query = sql.SQL(
        "insert into {table} as u (tenant, day, hour, kind, {column})"
        " select * from unnest(%s::text[], %s::date[], %s::smallint[], %s::text[], %s::bigint[])"
        " on conflict (tenant, day, hour, kind) do update set {column} = u.{column} + excluded.{column}"
    ).format(table=sql.Identifier("_realtime", table), column=sql.Identifier(column))
    await conn.execute(query, [list(c) for c in zip(*rows, strict=True)])
