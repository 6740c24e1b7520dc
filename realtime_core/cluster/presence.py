"""Presence replicated across the nodes of a cluster through Redis (docs/design.md §6).

As Phoenix.Presence does between Erlang nodes, every node holds every presence of the
cluster: its own in the hub (tracked by its channels, as InProcessBroker does) and a replica
of the others', so presence_state() stays synchronous and complete for a late joiner.

Redis holds, per node, a hash `presence:<node>` (entry id → [tenant, private, sub_topic,
presence key, meta]; an entry is one channel's presence, its id `<node>:<n>`), and carries
every change on the channel `presence` as JSON `{"n": node, "t": unix ms, "e": [[tenant,
private, sub_topic, {entry: [key, meta]}, [entry, ...]], ...]}` (entries set, entries
removed). A change is written to the hash and published in one MULTI, in order, by one
writer task: a node that subscribes to the channel and then reads the hashes misses nothing,
and what it sees twice does nothing, since applying a change is idempotent.

Diffs: the tracking node's channel delivers its own diff locally (channel.py publishes what
presence_join/leave return through the broker); every other node computes the same diff from
its replica as it applies the change and delivers it to its own subscribers of the topic. So
each subscriber in the cluster gets one presence_diff per join or leave, and a late joiner's
presence_state never disagrees with the diffs that follow it on its node. PresenceBroker,
which wraps the broker of messages, therefore delivers presence publications (kind
`presence`) on this node only.

A node that dies leaves its hash behind; the node that reaps it (nodes.py) publishes the
removal of all its entries, one change per topic, and deletes the hash: its presences leave
everywhere within the liveness bound (README, "Presence, limits and usage across nodes")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..broker import Broker, InProcessBroker
from ..hub import PRESENCE_KIND, Audience, Hub, Publication, StreamKey, Subscriber
from ..presence import Diff

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..tenants import Tenant

__all__ = ["PresenceBroker", "RedisPresence"]

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, Any]]  # (presence key, meta)
# One change on the wire: [tenant, private, sub_topic, {entry: [key, meta]}, [removed entry, ...]]
Change = list[Any]
_RETRY_FIRST = 0.1  # s: pauses between attempts to reach Redis again
_RETRY_MAX = 5.0
_STOP_TIMEOUT = 2.0  # s: how long stop() waits for the queued changes to be written


# KEYS[1]: the dead node's presences, KEYS[2]: its liveness key; ARGV: the channel, the node,
# unix ms. One script: a node seen dead a moment ago that beat again is left alone, and the
# removal is published in the same step as the hash is deleted (as _write() does).
_REAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local stored = redis.call('HGETALL', KEYS[1])
if #stored == 0 then return 0 end
local topics, order = {}, {}
for i = 1, #stored, 2 do
  local value = cjson.decode(stored[i + 1])
  local topic = cjson.encode({value[1], value[2], value[3]})
  local change = topics[topic]
  if change == nil then
    change = {value[1], value[2], value[3], {}, {}}
    topics[topic] = change
    order[#order + 1] = change
  end
  table.insert(change[5], stored[i])
end
redis.call('PUBLISH', ARGV[1], cjson.encode({n = ARGV[2], t = tonumber(ARGV[3]), e = order}))
redis.call('DEL', KEYS[1])
return #stored / 2
"""


async def _no_nodes() -> set[str]:
    return set()


def _node_of(entry: str) -> str:
    """The node of an entry id (`<node>:<n>`)."""
    return entry.rpartition(":")[0]


class RedisPresence:
    """The presence part of the Broker Protocol (broker/__init__.py) for a cluster node.

    start() loads every node's presences and follows their changes; stop() ends that after
    writing what is queued. max_lag_ms() gives the highest pub/sub lag seen since the last call."""

    def __init__(
        self,
        hub: Hub,
        redis: Redis,
        prefix: str,
        node_id: str,
        tenant: Callable[[str], Tenant | None],
        now: Callable[[], float],
    ) -> None:
        self.hub = hub
        self.local = InProcessBroker(hub)  # this node's presences, counted as one node counts them
        self.redis = redis
        self.prefix = prefix
        self.node_id = node_id
        self.channel = f"{prefix}presence"
        self._tenant = tenant
        self._now = now
        self.remote: dict[StreamKey, dict[str, Entry]] = {}  # the other nodes' presences
        self._ids: dict[Subscriber, str] = {}  # this node's channels with a presence → entry id
        self._next = 0
        # entry → (stream, value or None for a leave) to write, in order. One change per entry:
        # only its last matters (applying is idempotent), so a long Redis outage holds at most
        # one change per presence.
        self._outbox: dict[str, tuple[StreamKey, Entry | None]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._writing = False  # a batch is being written
        self._reader: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._reap = redis.register_script(_REAP)
        self._max_lag: float | None = None  # ms between a change's publication and its arrival here
        self.resyncs = 0
        self._resyncing = asyncio.Lock()  # the beat and the reader may both ask for one
        self._missing: dict[str, float] = {}  # node → when drop_missing() first missed it
        # The ids of the nodes whose liveness key is set (nodes.py); set before start().
        self.live_nodes: Callable[[], Awaitable[set[str]]] = _no_nodes

    def hash_key(self, node_id: str) -> str:
        return f"{self.prefix}presence:{node_id}"

    # The Broker's presence methods: synchronous, in memory; Redis is written behind.

    def presence_join(self, key: StreamKey, owner: Subscriber, presence_key: str, meta: dict[str, Any]) -> Diff | None:
        diff = self.local.presence_join(key, owner, presence_key, meta)
        if diff is not None:
            entry = self._ids.get(owner)
            if entry is None:
                self._next += 1
                entry = self._ids[owner] = f"{self.node_id}:{self._next:x}"
            (joined,) = diff["joins"].items()
            self._queue(key, entry, (joined[0], joined[1]["metas"][0]))
        return diff

    def presence_leave(self, key: StreamKey, owner: Subscriber) -> Diff | None:
        diff = self.local.presence_leave(key, owner)
        entry = self._ids.pop(owner, None)
        if diff is not None and entry is not None:
            self._queue(key, entry, None)
        return diff

    def presence_state(self, key: StreamKey) -> dict[str, dict[str, list[dict[str, Any]]]]:
        state = self.local.presence_state(key)
        remote = self.remote.get(key)
        if remote:
            for presence_key, meta in remote.values():
                entry = state.get(presence_key)
                if entry is None:
                    state[presence_key] = {"metas": [meta]}
                else:
                    entry["metas"].append(meta)
        return state

    def _queue(self, key: StreamKey, entry: str, value: Entry | None) -> None:
        self._outbox.pop(entry, None)  # queued again: written after what was queued before
        self._outbox[entry] = (key, value)
        self._wake.set()

    # Lifecycle

    async def start(self, node_ids: list[str]) -> None:
        """Follow the cluster's changes, then load the presences of `node_ids` (every node
        registered); changes published meanwhile are applied after, in order."""
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)
        self.remote = await self._load(node_ids)
        self._writer = asyncio.create_task(self._write_forever(), name="cluster presence writer")
        self._reader = asyncio.create_task(self._read_forever(), name="cluster presence reader")

    async def stop(self) -> None:
        """Write what is queued (the leaves of the channels just closed), then stop following."""
        deadline = time.monotonic() + _STOP_TIMEOUT
        while (self._outbox or self._writing) and self._writer is not None and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._outbox:
            log.warning("cluster presence: %d changes not written at stop", len(self._outbox))
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()

    async def _load(self, node_ids: list[str]) -> dict[StreamKey, dict[str, Entry]]:
        pipe = self.redis.pipeline(transaction=False)
        others = [n for n in node_ids if n != self.node_id]
        for node in others:
            pipe.hgetall(self.hash_key(node))
        replica: dict[StreamKey, dict[str, Entry]] = {}
        for stored in await pipe.execute() if others else []:
            for entry, value in stored.items():
                tenant, private, sub_topic, presence_key, meta = orjson.loads(value)
                replica.setdefault(StreamKey(tenant, private, sub_topic), {})[entry] = (presence_key, meta)
        return replica

    # Writing: one task, in order; a batch is one MULTI (hash writes and one PUBLISH).

    def _take(self) -> list[tuple[StreamKey, str, Entry | None]]:
        batch, self._outbox = self._outbox, {}
        return [(key, entry, value) for entry, (key, value) in batch.items()]

    async def _write_forever(self) -> None:
        delay = _RETRY_FIRST
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            if not batch:
                continue
            self._writing = True
            try:
                await self._write(batch)
                delay = _RETRY_FIRST
            except Exception as exc:
                log.warning("cluster presence: Redis write failed, %d changes kept: %s", len(batch), exc)
                # Put back before what was queued meanwhile, which is newer.
                self._outbox = {entry: (key, value) for key, entry, value in batch} | self._outbox
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                self._wake.set()
            finally:
                self._writing = False

    async def _write(self, batch: list[tuple[StreamKey, str, Entry | None]]) -> None:
        own = self.hash_key(self.node_id)
        changes: dict[StreamKey, Change] = {}
        pipe = self.redis.pipeline(transaction=True)
        for key, entry, value in batch:
            change = changes.get(key)
            if change is None:
                change = changes[key] = [key.tenant, key.private, key.sub_topic, {}, []]
            if value is None:
                pipe.hdel(own, entry)
                change[3].pop(entry, None)
                change[4].append(entry)
            else:
                pipe.hset(own, entry, orjson.dumps([key.tenant, key.private, key.sub_topic, value[0], value[1]]))
                change[3][entry] = list(value)
        message = {"n": self.node_id, "t": int(time.time() * 1000), "e": list(changes.values())}
        pipe.publish(self.channel, orjson.dumps(message))
        await pipe.execute()

    async def reap(self, node_id: str, alive_key: str) -> int:
        """Remove every presence of the dead node `node_id`, everywhere; return how many
        (-1: its liveness key `alive_key` is set again, it is not dead)."""
        return int(
            await self._reap(
                keys=[self.hash_key(node_id), alive_key], args=[self.channel, node_id, int(time.time() * 1000)]
            )
        )

    # Reading: apply each change to the replica and deliver the diff it makes here.

    async def _read_forever(self) -> None:
        delay = _RETRY_FIRST
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        self._received(message["data"])
                        delay = _RETRY_FIRST
                # listen() ends at once, without waiting, when nothing is subscribed (a failed
                # resubscription): without this the loop would spin and starve the event loop.
                raise ConnectionError("not subscribed to the presence channel")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster presence: Redis subscription lost (%s); resynchronising", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                try:
                    await self._follow_again()
                except Exception as again:
                    log.warning("cluster presence: resynchronisation failed, retrying: %s", again)

    async def _follow_again(self) -> None:
        """After a lost subscription: subscribe again, then resync()."""
        await self._pubsub.aclose()
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)
        await self.resync()

    async def resync(self) -> None:
        """Write this node's presences again (Redis may have restarted empty, or this node been
        reaped), reload the live nodes' and deliver what changed meanwhile. A node without a
        liveness key keeps its presences here: it may be writing them again (its own resync),
        and if it is dead they leave with it (drop_missing())."""
        async with self._resyncing:
            self.queue_own()
            live = await self.live_nodes()
            replica = await self._load(sorted(live))
            for key in set(self.remote) | set(replica):
                before = self.remote.get(key, {})
                after = replica.get(key, {})
                removed = [e for e in before if e not in after and _node_of(e) in live]
                self._apply(key, {e: v for e, v in after.items() if before.get(e) != v}, removed)
            self.resyncs += 1
            log.info("cluster presence: resynchronised (%d topics with other nodes' presences)", len(self.remote))

    def queue_own(self) -> None:
        """Queue every presence of this node for writing again, through the writer's queue (a
        leave queued after this is written after it)."""
        for key, topic in self.hub.presences.items():
            for owner, presence_key, meta in topic.entries():
                entry = self._ids.get(owner)  # type: ignore[call-overload]
                if entry is not None:
                    self._queue(key, entry, (presence_key, meta))

    async def flushed(self, timeout: float) -> bool:
        """Wait until everything queued is written; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._outbox or self._writing:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.01)
        return True

    def drop_missing(self, live: set[str], grace: float) -> None:
        """Remove, with their leaves, the presences of nodes missing from `live` for `grace`
        seconds: a node whose state Redis lost and that never came back is reaped by nobody."""
        now = time.monotonic()
        present = {_node_of(e) for replica in self.remote.values() for e in replica}
        for node in present - live:
            since = self._missing.setdefault(node, now)
            if now - since < grace:
                continue
            del self._missing[node]
            log.warning("cluster presence: node %s is gone without being reaped; its presences leave", node)
            for key in list(self.remote):
                gone = [e for e in self.remote[key] if _node_of(e) == node]
                if gone:
                    self._apply(key, {}, gone)
        for node in list(self._missing):
            if node in live or node not in present:
                del self._missing[node]

    def _received(self, data: str) -> None:
        message = orjson.loads(data)
        lag = time.time() * 1000 - message["t"]
        if self._max_lag is None or lag > self._max_lag:
            self._max_lag = lag
        if message["n"] == self.node_id:
            return  # this node's own changes: its hub has them and its channels delivered them
        for tenant, private, sub_topic, joined, removed in message["e"]:
            self._apply(StreamKey(tenant, private, sub_topic), {e: (v[0], v[1]) for e, v in joined.items()}, removed)

    def _apply(self, key: StreamKey, joined: dict[str, Entry], removed: list[str]) -> None:
        replica = self.remote.get(key)
        if replica is None:
            replica = self.remote[key] = {}
        diff: Diff = {"joins": {}, "leaves": {}}
        for entry in removed:
            old = replica.pop(entry, None)
            if old is not None:
                diff["leaves"].setdefault(old[0], {"metas": []})["metas"].append(old[1])
        for entry, value in joined.items():
            old = replica.get(entry)
            if old == value:
                continue  # already here (a change seen in the snapshot too)
            replica[entry] = value
            if old is not None:
                diff["leaves"].setdefault(old[0], {"metas": []})["metas"].append(old[1])
            diff["joins"].setdefault(value[0], {"metas": []})["metas"].append(value[1])
        if not replica:
            del self.remote[key]
        if diff["joins"] or diff["leaves"]:
            self._deliver(key, diff)

    def _deliver(self, key: StreamKey, diff: Diff) -> None:
        tenant = self._tenant(key.tenant)
        if tenant is None:
            return
        publication = Publication(
            f"realtime:{key.sub_topic}",
            "presence_diff",
            orjson.dumps(diff),
            audience=Audience.PRESENCE,
            kind=PRESENCE_KIND,
        )
        now = self._now()
        delivered = self.hub.publish(tenant, key, publication, now)
        tenant.presence_events.add(delivered, now)

    def max_lag_ms(self) -> float | None:
        """The highest pub/sub lag (ms, publisher's clock to this node's) since the last call."""
        lag, self._max_lag = self._max_lag, None
        return lag


class PresenceBroker:
    """A Broker whose presences are the cluster's (RedisPresence) and whose messages go through
    `inner` (the in-process broker, or one between nodes), presence diffs excepted: those are
    delivered on this node only, since every other node derives them from the change it
    receives (see the module's docstring)."""

    __slots__ = ("hub", "inner", "presence")

    def __init__(self, inner: Broker, hub: Hub, presence: RedisPresence) -> None:
        self.inner = inner
        self.hub = hub
        self.presence = presence

    def publish(
        self, tenant: Tenant, key: StreamKey, publication: Publication, now: float, exclude: Subscriber | None = None
    ) -> int:
        if publication.kind == PRESENCE_KIND:
            return self.hub.publish(tenant, key, publication, now, exclude)
        return self.inner.publish(tenant, key, publication, now, exclude)

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int = 1) -> None:
        self.inner.accepted(tenant, kind, key, count)

    def subscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        self.inner.subscribe(key, subscriber)

    async def ready(self, key: StreamKey) -> None:
        await self.inner.ready(key)

    def unsubscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        self.inner.unsubscribe(key, subscriber)

    def presence_join(self, key: StreamKey, owner: Subscriber, presence_key: str, meta: dict[str, Any]) -> Diff | None:
        return self.presence.presence_join(key, owner, presence_key, meta)

    def presence_leave(self, key: StreamKey, owner: Subscriber) -> Diff | None:
        return self.presence.presence_leave(key, owner)

    def presence_state(self, key: StreamKey) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return self.presence.presence_state(key)
