"""The Broker (broker/__init__.py) of a cluster: topics published between processes through Redis
(docs/design.md §5).

app.App makes one when REDIS_URL is set. publish() delivers to this process's hub at once,
as the in-process broker does, and queues the message (cluster/codec.py) for one Redis
publish on the stream's channel: sharded pub/sub (SPUBLISH/SSUBSCRIBE) where the server
has it (Redis 7), plain PUBLISH/SUBSCRIBE otherwise. A process listens on a stream's
channel only while it has local subscribers there: the first subscribe() subscribes the
channel, the last unsubscribe() unsubscribes it. What it receives from other processes goes
to its hub's publish(), which builds each frame once per codec; its own messages coming
back are skipped by their node id, so `exclude` (a sender without `self`) only matters on
the origin node.

Order: one connection publishes, in the order publish() was called, and one connection
receives, so messages of one topic from one publisher arrive in order everywhere.

Two background tasks own the connections, each reconnecting with a growing pause:
_publish_forever() sends what publish() queued, pipelined (everything queued while the
previous batch was on the wire goes in the next, each stream's messages of a batch packed
into one Redis message: codec.pack()); _receive_forever() reads the channels'
messages and, beside it, _sync_channels() sends (un)subscribes and a PING a second (a
receiving connection silent for _DEAD_AFTER is taken for cut). While the publishing
connection is down, published messages cannot reach the other processes: each is counted
in `dropped` and the cut is logged when it starts and when it ends, with the count. After
the receiving connection comes back, every channel with local subscribers is subscribed
again. What other processes published while this one's receiving connection was down is
lost to its subscribers; the processes that lost their publishing connection counted it.

Counters (metrics.ClusterCounters, exposed as realtime_cluster_*): messages published,
received, dropped, malformed; reconnects; the pub/sub lag (publish time on the sender's
clock against receive time here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from ..authorization import LatencyHistogram
from ..broker import InProcessBroker
from ..hub import Clock, Hub, Publication, StreamKey, Subscriber
from ..presence import Diff
from . import RedisUnavailable, codec

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

# Pauses between reconnection attempts (s): doubled after each failure, up to the last.
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0
_CONNECT_TIMEOUT = 2.0
# The receiving connection PINGs this often (s) and is taken for cut after _DEAD_AFTER of silence.
_PING_INTERVAL = 1.0
_DEAD_AFTER = 3.5
# Messages queued for Redis beyond this (a stalled connection) are dropped and counted.
_MAX_QUEUED = 200_000
_CHANNELS_KEPT = 4096  # Redis channel names kept for publish(); past this the cache starts over
_MESSAGE_TYPES = frozenset({b"message", b"smessage"})
_SUBSCRIBED = frozenset({b"subscribe", b"ssubscribe"})
# How long a join waits for Redis to confirm its channel's subscription (s).
_READY_TIMEOUT = 2.0


class RedisBroker:
    """A Broker whose nodes are every process of the cluster on one Redis (REDIS_URL)."""

    def __init__(
        self,
        hub: Hub,
        *,
        url: str,
        prefix: str,
        node_id: str,
        tenant_of: Callable[[str], Tenant | None],
        clock: Clock,
    ) -> None:
        self.hub = hub
        self.node_id = node_id
        self.prefix = prefix
        self._tenant_of = tenant_of
        self._clock = clock
        self._local = InProcessBroker(hub)  # presences stay on this node (for now)
        self._pool = ConnectionPool.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=None,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),  # reconnecting is ours: counted and logged
            protocol=2,  # RESP3 would hand pub/sub messages to a push handler, not to read_response()
        )
        self.url = url
        # Counters (metrics.ClusterCounters)
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.malformed = 0
        self.reconnects = 0
        self.lag = LatencyHistogram()  # ms
        self._lag_sums: dict[str, list[float]] = {}  # tenant → [sum ms, count] since take_lag()
        self.sharded = True  # SPUBLISH/SSUBSCRIBE; False on a server without them
        # Publishing
        self._queue: list[tuple[bytes, bytes]] = []  # (channel, message), in publish() order
        self._channels: dict[StreamKey, bytes] = {}  # the Redis channels of streams published to lately
        self._queued = asyncio.Event()
        self.publishing = False  # the publishing connection is up
        self._cut_at: float | None = None
        self._dropped_in_cut = 0
        # Receiving: channel → stream, for every stream with a local subscriber
        self._wanted: dict[bytes, StreamKey] = {}
        self._subscribed: set[bytes] = set()  # subscribed on the current receiving connection
        self._confirmed: set[bytes] = set()  # of those, the ones Redis confirmed
        self._holds: dict[bytes, int] = {}  # channel → joins waiting in ready()
        self._waiters: dict[bytes, asyncio.Future[None]] = {}  # channel → resolved at confirmation
        self._changed: set[bytes] = set()  # channels whose subscription may need a command
        self._channel_changes = asyncio.Event()
        self.receiving = False
        self._heard = 0.0  # when the receiving connection last got anything (clock)
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[AbstractConnection] = set()  # closed at stop()

    # Lifecycle

    async def start(self) -> None:
        """Connect both ways (raises RedisUnavailable naming REDIS_URL when Redis does not answer)
        and start the background tasks that keep them."""
        try:
            publisher = await self._connect()
            receiver = await self._connect()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"REDIS_URL {_redacted(self.url)} does not answer: {exc}") from None
        self.sharded = await self._has_sharded_pubsub(publisher)
        if not self.sharded:
            log.info("redis: no sharded pub/sub on this server; using PUBLISH/SUBSCRIBE")
        self._tasks = [
            asyncio.create_task(self._publish_forever(publisher), name="cluster publisher"),
            asyncio.create_task(self._receive_forever(receiver), name="cluster receiver"),
        ]

    async def stop(self) -> None:
        """Stop the tasks and close the connections (messages still queued are counted as dropped)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._drop(len(self._queue))
        self._queue = []
        for conn in list(self._connections):
            await self._close(conn)

    # Broker

    def publish(
        self, tenant: Tenant, key: StreamKey, publication: Publication, now: float, exclude: Subscriber | None = None
    ) -> int:
        sent_at = time.time()
        publication.origin = (self.node_id, sent_at)  # the same on every node (the live tail)
        delivered = self.hub.publish(tenant, key, publication, now, exclude)
        queue = self._queue
        if not self.publishing or len(queue) >= _MAX_QUEUED:
            self._drop(1)
            return delivered
        channel = self._channels.get(key)
        if channel is None:
            if len(self._channels) >= _CHANNELS_KEPT:
                self._channels.clear()
            channel = self._channels[key] = codec.channel(self.prefix, key)
        queue.append((channel, codec.encode(self.node_id, sent_at, publication)))
        if len(queue) == 1:
            self._queued.set()
        return delivered

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int = 1) -> None:
        self.hub.accepted(tenant, kind, key, count)  # on the origin node only: received messages are not

    def subscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        self.hub.subscribe(key, subscriber)
        channel = codec.channel(self.prefix, key)
        if channel not in self._wanted:
            self._wanted[channel] = key
            self._channel_changed(channel)

    def unsubscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        if self.hub.unsubscribe(key, subscriber):
            channel = codec.channel(self.prefix, key)
            if channel not in self._holds and self._wanted.pop(channel, None) is not None:
                self._channel_changed(channel)

    async def ready(self, key: StreamKey) -> None:
        """Return once Redis confirmed this process's subscription to the channel of `key`: at
        once when it already had, or while the receiving connection is known to be cut (the
        channel is subscribed when it is back); after _READY_TIMEOUT at most."""
        channel = codec.channel(self.prefix, key)
        if channel in self._confirmed or not self.receiving:
            return
        self._holds[channel] = self._holds.get(channel, 0) + 1
        if channel not in self._wanted:
            self._wanted[channel] = key
            self._channel_changed(channel)
        waiter = self._waiters.get(channel)
        if waiter is None:
            waiter = self._waiters[channel] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), _READY_TIMEOUT)
        except TimeoutError:
            if self.receiving:  # a cut found meanwhile is logged once, not at every join
                log.warning("redis: no confirmation of the subscription to %r within %.1f s", channel, _READY_TIMEOUT)
        finally:
            holds = self._holds[channel] - 1
            if holds:
                self._holds[channel] = holds
            else:
                del self._holds[channel]
                # After the caller's subscribe(), which follows with no await: if none came (the
                # client left meanwhile), nobody here listens on the channel.
                asyncio.get_running_loop().call_soon(self._release, key, channel)

    def _release(self, key: StreamKey, channel: bytes) -> None:
        if channel not in self._holds and not self.hub.has_subscribers(key) and self._wanted.pop(channel, None):
            self._channel_changed(channel)

    def take_lag(self, tenant: str) -> float:
        """The mean pub/sub lag (ms) of the messages of `tenant` received since the last call; 0 if none."""
        sums = self._lag_sums.pop(tenant, None)
        return round(sums[0] / sums[1], 3) if sums else 0.0

    def channels(self) -> int:
        """How many channels this process listens on (streams with a local subscriber)."""
        return len(self._wanted)

    # Presence: this node's only, as InProcessBroker (replication through Redis replaces these).

    def presence_join(self, key: StreamKey, owner: Subscriber, presence_key: str, meta: dict[str, Any]) -> Diff | None:
        return self._local.presence_join(key, owner, presence_key, meta)

    def presence_leave(self, key: StreamKey, owner: Subscriber) -> Diff | None:
        return self._local.presence_leave(key, owner)

    def presence_state(self, key: StreamKey) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return self._local.presence_state(key)

    # Publishing

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self._dropped_in_cut += count

    async def _publish_forever(self, conn: AbstractConnection) -> None:
        while True:
            try:
                self._up("publishing")
                await self._send_queued(conn)
            except (RedisError, OSError) as exc:
                self._down("publishing", exc)
            await self._close(conn)
            conn = await self._reconnect()

    async def _reconnect(self) -> AbstractConnection:
        """A new connection, tried again after a pause that doubles from _RETRY_FIRST up to
        _RETRY_MAX until Redis answers."""
        delay = _RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
            try:
                return await self._connect()
            except (RedisError, OSError):
                continue

    async def _send_queued(self, conn: AbstractConnection) -> None:
        command = b"SPUBLISH" if self.sharded else b"PUBLISH"
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
            batch, self._queue = self._queue, []
            try:
                # Bounded: a connection cut without a reset (a network partition) must not hang here.
                # One deadline per batch, pushed back as answers come (a timeout per read cost
                # about a third of the receiving side's time, measured with cProfile).
                async with asyncio.timeout(_DEAD_AFTER) as deadline:
                    commands = [(command, channel, data) for channel, data in _packed(batch)]
                    await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                    for index in range(len(commands)):
                        await conn.read_response(timeout=math.inf)
                        if index % 1024 == 1023:
                            deadline.reschedule(self._clock() + _DEAD_AFTER)
            except BaseException:
                # Some may have reached Redis: counted as dropped all the same (never as sent).
                self._drop(len(batch))
                raise
            self.published += len(batch)

    # Receiving

    def _channel_changed(self, channel: bytes) -> None:
        self._changed.add(channel)
        self._channel_changes.set()

    async def _receive_forever(self, conn: AbstractConnection) -> None:
        while True:
            self._heard = self._clock()
            self._up("receiving")
            # The connection ends with whichever fails first: reading, or keeping it subscribed
            # and PINGed (which also notices that it went silent).
            tasks = {
                asyncio.create_task(self._read(conn), name="cluster receiver reading"),
                asyncio.create_task(self._sync_channels(conn), name="cluster subscriptions"),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                exc = next(iter(done)).exception()
                if not isinstance(exc, (RedisError, OSError)):
                    raise exc or RuntimeError("a cluster receiver task ended")
                self._down("receiving", exc)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                        await task
            await self._close(conn)
            conn = await self._reconnect()

    async def _sync_channels(self, conn: AbstractConnection) -> None:
        """Keep the connection subscribed to exactly the wanted channels, and PING it."""
        subscribe, unsubscribe = (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if self.sharded else (b"SUBSCRIBE", b"UNSUBSCRIBE")
        self._subscribed = set()
        self._confirmed = set()
        self._changed = set(self._wanted)  # a new connection: every channel again
        next_ping = 0.0
        while True:
            changed, self._changed = self._changed, set()
            self._channel_changes.clear()
            wanted, subscribed = self._wanted, self._subscribed
            adds = [c for c in changed if c in wanted and c not in subscribed]
            removes = [c for c in changed if c not in wanted and c in subscribed]
            commands: list[tuple[bytes, ...]] = []
            if adds:
                commands.append((subscribe, *adds))
                subscribed.update(adds)
            if removes:
                commands.append((unsubscribe, *removes))
                subscribed.difference_update(removes)
                self._confirmed.difference_update(removes)
            now = self._clock()
            if now - self._heard > _DEAD_AFTER:
                raise ConnectionError(f"no answer to PING within {_DEAD_AFTER:.1f} s")
            if now >= next_ping:
                commands.append((b"PING",))
                next_ping = now + _PING_INTERVAL
            if commands:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._channel_changes.wait(), max(0.0, next_ping - self._clock()))

    async def _read(self, conn: AbstractConnection) -> None:
        clock = self._clock
        while True:
            response = await conn.read_response(timeout=math.inf)  # _sync_channels() watches for silence
            self._heard = clock()
            if not isinstance(response, list) or not response:
                continue
            kind = response[0]
            if kind in _MESSAGE_TYPES:
                self._received(response[1], response[2])
            elif kind in _SUBSCRIBED:
                self._subscription_confirmed(response[1])

    def _subscription_confirmed(self, channel: bytes) -> None:
        if channel in self._subscribed:
            self._confirmed.add(channel)
        waiter = self._waiters.pop(channel, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _received(self, channel: bytes, data: bytes) -> None:
        key = self._wanted.get(channel)
        if key is None:
            return  # unsubscribed meanwhile
        try:
            messages = codec.unpack(data)
        except codec.CodecError as exc:
            self._malformed(channel, exc)
            return
        tenant = self._tenant_of(key.tenant)
        # One pack arrived at once: one clock reading, one lag sum for all its messages.
        received_at, now = time.time(), self._clock()
        lags = 0.0
        count = 0
        for message in messages:
            try:
                node, sent_at, publication = codec.decode(message)
            except codec.CodecError as exc:
                self._malformed(channel, exc)
                continue
            if node == self.node_id:
                return  # ours (a pack is one node's), delivered here at publish()
            lag = max(0.0, (received_at - sent_at) * 1000)
            self.lag.observe(lag)
            lags += lag
            count += 1
            if tenant is not None:
                self.hub.publish(tenant, key, publication, now)
        if count:
            self.received += count
            sums = self._lag_sums.get(key.tenant)
            if sums is None:
                sums = self._lag_sums[key.tenant] = [0.0, 0]
            sums[0] += lags
            sums[1] += count

    def _malformed(self, channel: bytes, exc: codec.CodecError) -> None:
        self.malformed += 1
        if self.malformed == 1 or math.log10(self.malformed).is_integer():
            log.warning("redis: dropped a malformed message on %r (%d so far): %s", channel, self.malformed, exc)

    # Connections

    async def _connect(self) -> AbstractConnection:
        conn = self._pool.make_connection()
        # The whole handshake bounded: a frozen server accepts the TCP connection and never answers.
        self._connections.add(conn)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await conn.connect()
        except BaseException:
            await self._close(conn)
            raise
        return conn

    async def _close(self, conn: AbstractConnection) -> None:
        self._connections.discard(conn)
        with contextlib.suppress(RedisError, OSError):
            await conn.disconnect(nowait=True)

    async def _has_sharded_pubsub(self, conn: AbstractConnection) -> bool:
        try:
            await conn.send_command("SPUBLISH", f"{self.prefix}probe", b"")
            await conn.read_response()
        except ResponseError:
            return False
        return True

    def _up(self, direction: str) -> None:
        setattr(self, direction, True)
        if self._cut_at is not None and self.publishing and self.receiving:
            log.warning(
                "redis: reconnected after %.1f s; %d message(s) published meanwhile were dropped",
                time.monotonic() - self._cut_at,
                self._dropped_in_cut,
            )
            self._cut_at = None

    def _down(self, direction: str, exc: BaseException) -> None:
        setattr(self, direction, False)
        self.reconnects += 1
        if self._cut_at is None:
            self._cut_at = time.monotonic()
            self._dropped_in_cut = 0
            log.error(
                "redis: %s connection lost (%s); reconnecting, messages published meanwhile are dropped and counted",
                direction,
                exc or type(exc).__name__,
            )


def _redacted(url: str) -> str:
    """`url` without its password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("//")
    return f"{scheme}//***@{tail}"


def _packed(batch: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """(channel, pack) for the queued (channel, message) pairs: each channel's messages in their
    order, packed (codec.pack()); channels in the order of their first message."""
    by_channel: dict[bytes, list[bytes]] = {}
    for channel, message in batch:
        messages = by_channel.get(channel)
        if messages is None:
            by_channel[channel] = [message]
        else:
            messages.append(message)
    return [(channel, data) for channel, messages in by_channel.items() for data in codec.pack(messages)]
