"""Cluster-wide counts for limits and usage (docs/design.md §6).

Connections, exact: after each connect and disconnect this node writes its tenant's count
(absolute, so that a write retried after a cut connection counts once) to `conns:<node>` and
moves the cluster's total in `conns` by the difference, in one script (_SET) that answers the
new total: the cluster's count right after that connect, which usage.py turns into peaks
(UsageMeter.cluster_total()). The changes queued while one MULTI is in flight go together in
the next: no round trip per connect on the socket's path. A dead node's counts are subtracted
from the totals when it is reaped (reap()).

Users and rates, within two sync intervals: every `interval` seconds a node writes its own per
tenant (users, and events, joins and presence events per second, as limits.RateCounter
averages them) to `load:<node>` (expiring after the liveness TTL) and reads the other live
nodes'. Their sums become `Tenant.remote_users` and each counter's `remote`, which the limit
checks add to this node's own: no Redis round trip per message, a lag of at most two intervals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..tenants import Tenant
    from ..usage import UsageMeter

__all__ = ["ClusterCounters"]

log = logging.getLogger(__name__)

_RETRY_MAX = 5.0
_STOP_TIMEOUT = 2.0

# KEYS[1]: the dead node's counts, KEYS[2]: the cluster's totals, KEYS[3]: its liveness key.
# Atomic: no connect is counted between reading the node's counts and taking them off, and a
# node that beat again meanwhile is left alone.
_REAP = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if tonumber(counts[i + 1]) ~= 0 then
    redis.call('HINCRBY', KEYS[2], counts[i], -tonumber(counts[i + 1]))
  end
end
redis.call('DEL', KEYS[1])
return #counts / 2
"""
# KEYS[1]: this node's counts, KEYS[2]: the cluster's totals; ARGV: tenant, this node's count.
# Returns the cluster's total after the change.
_SET = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], new)
return redis.call('HINCRBY', KEYS[2], ARGV[1], new - old)
"""


class ClusterCounters:
    """This node's share of the cluster's counts, and the others' as last read.

    A usage.ClusterConnections: connected()/disconnected() are called by usage.py."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        node_id: str,
        tenants: Callable[[], Iterable[Tenant]],
        usage: UsageMeter,
        now: Callable[[], float],
        ttl_ms: int,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.node_id = node_id
        self.tenants = tenants
        self.usage = usage
        self.now = now
        self.ttl_ms = ttl_ms
        self.totals_key = f"{prefix}conns"
        self._counts: dict[str, int] = {}  # tenant → this node's open connections
        # (tenant, this node's count after the change, whether it was a connect), not yet sent
        self._queued: list[tuple[str, int, bool]] = []
        self._wake = asyncio.Event()
        self._writing = False
        self._writer: asyncio.Task[None] | None = None
        self._reap = redis.register_script(_REAP)
        self._set = redis.register_script(_SET)

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}conns:{node_id}"

    def load_key(self, node_id: str) -> str:
        return f"{self.prefix}load:{node_id}"

    # usage.ClusterConnections

    def connected(self, tenant_id: str) -> None:
        count = self._counts[tenant_id] = self._counts.get(tenant_id, 0) + 1
        self._queued.append((tenant_id, count, True))
        self._wake.set()

    def disconnected(self, tenant_id: str) -> None:
        count = self._counts[tenant_id] = self._counts.get(tenant_id, 0) - 1
        self._queued.append((tenant_id, count, False))
        self._wake.set()

    # Lifecycle

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever(), name="cluster connection counts")

    async def stop(self) -> None:
        """Send what is queued (the disconnects of the sockets just closed), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_TIMEOUT
        while (self._queued or self._writing) and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._queued:
            log.warning("cluster counts: %d connection changes not written at stop", len(self._queued))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.redis.delete(self.load_key(self.node_id))

    async def _write_forever(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queued = self._queued, []
            if not batch:
                continue
            self._writing = True
            try:
                pipe = self.redis.pipeline(transaction=True)
                keys = [self.node_key(self.node_id), self.totals_key]
                for tenant_id, count, _ in batch:
                    await self._set(keys=keys, args=[tenant_id, count], client=pipe)
                totals = await pipe.execute()
                delay = 0.1
            except Exception as exc:
                log.warning("cluster counts: Redis write failed, %d changes kept: %s", len(batch), exc)
                # Kept as the last count per tenant, so that an outage holds one entry per
                # tenant (the peaks of the outage are then those seen when Redis is back).
                last: dict[str, tuple[str, int, bool]] = {}
                for tenant_id, count, connect in batch:
                    was = last.get(tenant_id)
                    last[tenant_id] = (tenant_id, count, connect or (was is not None and was[2]))
                self._queued[:0] = list(last.values())
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                self._wake.set()
                continue
            finally:
                self._writing = False
            for (tenant_id, _, connect), total in zip(batch, totals, strict=True):
                if connect:
                    self.usage.cluster_total(tenant_id, int(total))

    async def reap(self, node_id: str, alive_key: str) -> int:
        """Take the dead node `node_id`'s connections off the totals; return how many tenants it
        had (-1: its liveness key `alive_key` is set again, it is not dead)."""
        reaped = int(await self._reap(keys=[self.node_key(node_id), self.totals_key, alive_key]))
        if reaped >= 0:
            await self.redis.delete(self.load_key(node_id))
        return reaped

    def restore(self) -> None:
        """Count this node's connections in Redis again, after it was reaped (it stopped beating
        for a while) or Redis restarted empty: its counts are written again (absolute: where
        Redis still has them, nothing changes)."""
        for tenant_id, count in self._counts.items():
            self._queued.append((tenant_id, count, False))
        self._wake.set()

    async def connections(self) -> dict[str, int]:
        """The cluster's open connections by tenant."""
        totals = await self.redis.hgetall(self.totals_key)
        return {tenant: int(n) for tenant, n in totals.items() if int(n)}

    # Users and rates: written and read every interval by sync()

    def _own_load(self) -> dict[str, bytes]:
        now = self.now()
        load: dict[str, bytes] = {}
        for tenant in self.tenants():
            figures = (
                tenant.users,
                tenant.events.average(now),
                tenant.joins.average(now),
                tenant.presence_events.average(now),
            )
            if any(figures):
                load[tenant.external_id] = orjson.dumps(figures)
        return load

    async def sync(self, live_nodes: Iterable[str]) -> None:
        """Write this node's users and rates, read the other live nodes' and apply their sums."""
        others = [n for n in live_nodes if n != self.node_id]
        own = self.load_key(self.node_id)
        pipe = self.redis.pipeline(transaction=True)  # nobody reads this node's load half-written
        load = self._own_load()
        pipe.delete(own)
        if load:
            pipe.hset(own, mapping=load)  # type: ignore[arg-type]
            pipe.pexpire(own, self.ttl_ms)
        for node in others:
            pipe.hgetall(self.load_key(node))
        results = await pipe.execute()
        sums: dict[str, list[float]] = {}
        for stored in results[len(results) - len(others) :] if others else []:
            for tenant_id, value in stored.items():
                into = sums.setdefault(tenant_id, [0, 0.0, 0.0, 0.0])
                for i, figure in enumerate(orjson.loads(value)):
                    into[i] += figure
        for tenant in self.tenants():
            users, events, joins, presence = sums.get(tenant.external_id, (0, 0.0, 0.0, 0.0))
            tenant.remote_users = int(users)
            tenant.events.remote = events
            tenant.joins.remote = joins
            tenant.presence_events.remote = presence
