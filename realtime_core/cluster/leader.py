"""Replication leadership: which process of a cluster streams each tenant's slots.

app.App makes one ReplicationCluster when REDIS_URL is set; tenant_services asks it for a
Leadership per tenant and drives it (tenant_services.TenantServices._lead_forever()).

- Election: a PostgreSQL advisory lock, `pg_try_advisory_lock(lock_key(slots))`, taken on a
  session of its own to the tenant's database and held as long as that session lives. A
  process that does not get it tries again every RETRY_INTERVAL (plus jitter). When the
  leader dies its session ends, PostgreSQL releases the lock and the next try wins.
- Subscriptions: every process keeps its Postgres Changes subscriptions in the Redis hash
  `rt:<cluster>:pgsubs:<tenant>` (id → peers.subscription_record()) and announces each change
  on the channel `rt:<cluster>:pgsubs-changed:<tenant>`. The leader loads the hash when it
  takes over, follows the announcements, keeps the other processes' subscriptions in its
  registry behind RemoteChannel stand-ins, and acknowledges each registration to its
  process, which only then tells its client the subscription is live. A process that is
  gone (killed, or its Redis connection lost) no longer listens on its changes channel:
  the leader drops its subscriptions when it takes over and every PRUNE_EVERY checks.
- Changes: the leader publishes, per process, the changes its subscriptions get on
  `rt:<cluster>:changes:<node>` (peers.encode_batch(), behind a b"C"); acknowledgements go
  there too (b"A"). Each process delivers to its own channels (dispatch.deliver_published).
- `rt:<cluster>:leader:<tenant>` names the leading process (refreshed while it leads, with an
  expiry), for operators and for followers' `replication_connected`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import uuid
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..config import Settings
from ..hub import ChannelState
from ..postgres_changes.cdc import PostgresChanges
from ..postgres_changes.filters.errors import SubscriptionParamsError
from ..postgres_changes.filters.parsing import parse_params
from ..postgres_changes.peers import decode_batch, encode_records
from ..postgres_changes.subscriptions import Subscription
from ..tasks import spawn
from . import RedisUnavailable, keys

__all__ = ["RemoteChannel", "ReplicationCluster", "lock_key"]

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0  # seconds between a follower's tries of the lock (plus up to JITTER)
JITTER = 0.5
CHECK_INTERVAL = 1.0  # seconds between the leader's checks that its lock session lives
CHECK_TIMEOUT = 5.0  # a check that takes longer counts as a lost session
LEADER_TTL = 5  # seconds the leader key outlives the leader's last refresh
REGISTER_TIMEOUT = 10.0  # seconds a registration waits for the leader's acknowledgement
PRUNE_EVERY = 10  # leader checks between two prunings of dead processes' subscriptions
# Dead peers: PostgreSQL notices a vanished host by TCP keepalives (about 5 + 2 × 3 s).
_LOCK_OPTIONS = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
_CHANGES = b"C"
_ACK = b"A"


def lock_key(slots: tuple[str, str]) -> int:
    """The advisory lock key of a tenant: a signed 64-bit digest of its slot names, which are
    unique per tenant among databases sharing a PostgreSQL cluster."""
    digest = hashlib.sha256(("realtime-core leader\0" + "\0".join(slots)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class RemoteChannel:
    """The leader's stand-in for a channel joined on another process: what dispatch reads
    (claims, state) and where its changes go (node); for delivery traces also its topic and
    connection (hub.RemoteSubject)."""

    __slots__ = ("claims", "connection", "key", "node", "state", "sub_topic", "topic")

    def __init__(self, key: str, node: str, topic: str, claims: dict[str, Any], connection: str | None) -> None:
        self.key = key  # "<node>/<channel key>", unique in the cluster
        self.node = node
        self.topic = topic
        self.sub_topic = topic.removeprefix("realtime:")
        self.claims = claims
        self.connection = connection  # None from a process of an earlier release
        self.state = ChannelState.JOINED


class ReplicationCluster:
    """One process's link to the cluster for replication: its Redis client and pub/sub."""

    def __init__(self, settings: Settings, node: str) -> None:
        assert settings.redis_url
        self.node = node
        self.prefix = keys(settings)
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.node_channel = f"{self.prefix}changes:{node}"
        self._leaderships: dict[str, RedisLeadership] = {}  # by tenant
        self._events: dict[str, RedisLeadership] = {}  # by the subscriptions channel they lead
        self._pubsub = self.redis.pubsub()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self.redis.ping()
            await self._pubsub.subscribe(self.node_channel)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"REDIS_URL does not answer: {exc}") from None
        self._reader = spawn(self._read_forever(), name="replication cluster reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        await self.redis.aclose()

    def leadership(self, tenant_id: str, dsn: str, slots: tuple[str, str]) -> RedisLeadership:
        found = self._leaderships[tenant_id] = RedisLeadership(self, tenant_id, dsn, slots)
        return found

    def forget(self, leadership: RedisLeadership) -> None:
        if self._leaderships.get(leadership.tenant_id) is leadership:
            del self._leaderships[leadership.tenant_id]

    async def listen(self, channel: str, leadership: RedisLeadership | None) -> None:
        """Route `channel`'s messages to `leadership` (None: stop listening to it)."""
        if leadership is None:
            self._events.pop(channel, None)
            await self._pubsub.unsubscribe(channel)
        else:
            self._events[channel] = leadership
            await self._pubsub.subscribe(channel)

    async def _read_forever(self) -> None:
        interrupted = False
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message["type"] == "message":
                        self._route(message["channel"].decode(), message["data"])
                    elif interrupted and message["type"] == "subscribe":
                        # Back after a cut: a leader may have dropped this process's subscriptions
                        # meanwhile (it looked gone), so they are shared again.
                        interrupted = False
                        log.info("replication cluster: Redis pub/sub back; sharing subscriptions again")
                        for leadership in self._leaderships.values():
                            spawn(leadership.reregister(), group=leadership.tasks)
            except (RedisError, OSError) as exc:
                # The PubSub reconnects and subscribes again on its next read.
                interrupted = True
                log.warning("replication cluster: Redis pub/sub interrupted (%s); reconnecting", exc)
                await asyncio.sleep(0.5 + random.uniform(0, JITTER))

    def _route(self, channel: str, data: bytes) -> None:
        try:
            if channel == self.node_channel:
                kind, body = data[:1], data[1:]
                if kind == _CHANGES:
                    tenant, changes = decode_batch(body)
                    leadership = self._leaderships.get(tenant)
                    if leadership is not None and leadership.cdc is not None:
                        leadership.cdc.receive(changes)
                elif kind == _ACK:
                    ack = orjson.loads(body)
                    leadership = self._leaderships.get(ack["tenant"])
                    if leadership is not None:
                        leadership.acknowledged(ack["ids"])
            else:
                leadership = self._events.get(channel)
                if leadership is not None:
                    leadership.on_event(orjson.loads(data))
        except Exception:
            log.exception("replication cluster: message on %s not handled", channel)


class RedisLeadership:
    """tenant_services.Leadership and postgres_changes.peers.Peers of one tenant."""

    def __init__(self, cluster: ReplicationCluster, tenant_id: str, dsn: str, slots: tuple[str, str]) -> None:
        self.cluster = cluster
        self.tenant_id = tenant_id
        self.dsn = dsn
        self.lock = lock_key(slots)
        self.node = cluster.node
        self.peers = self
        self.leader: str | None = None
        self.cdc: PostgresChanges | None = None
        prefix = cluster.prefix
        self._leader_key = f"{prefix}leader:{tenant_id}"
        self._hash = f"{prefix}pgsubs:{tenant_id}"
        self._events = f"{prefix}pgsubs-changed:{tenant_id}"
        self._session: psycopg.AsyncConnection[Any] | None = None
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._remote: dict[str, RemoteChannel] = {}  # leader: channel key → stand-in
        self.tasks: set[asyncio.Task[Any]] = set()  # acknowledgements and re-registrations under way

    def attach(self, cdc: PostgresChanges | None) -> None:
        self.cdc = cdc

    # Election

    async def acquire(self) -> None:
        while True:
            try:
                if self._session is None or self._session.closed:
                    self._session = await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, application_name="realtime_leader", options=_LOCK_OPTIONS
                    )
                cur = await self._session.execute("select pg_try_advisory_lock(%s)", (self.lock,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self.leader = self.node
                    await self._announce()
                    return
            except psycopg.Error as exc:
                log.warning("tenant %s: leadership lock not tried (%s)", self.tenant_id, exc)
                await self._close_session()
            with contextlib.suppress(RedisError, OSError):
                value = await self.cluster.redis.get(self._leader_key)
                self.leader = value.decode() if value else None
            await asyncio.sleep(RETRY_INTERVAL + random.uniform(0, JITTER))

    async def lost(self) -> None:
        checks = 0
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            checks += 1
            if checks % PRUNE_EVERY == 0:
                await self._prune()
            session = self._session
            try:
                assert session is not None
                await asyncio.wait_for(session.execute("select 1"), CHECK_TIMEOUT)
            except (psycopg.Error, TimeoutError, AssertionError) as exc:
                log.error("tenant %s: leadership lock session lost (%s)", self.tenant_id, exc)
                self.leader = None
                await self._close_session()
                return
            await self._announce()

    async def _announce(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.cluster.redis.set(self._leader_key, self.node, ex=LEADER_TTL)

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(psycopg.Error):
                await session.close()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.follow()  # when stopped while leading
        if self.leader == self.node:
            with contextlib.suppress(RedisError, OSError):
                await self.cluster.redis.delete(self._leader_key)
            self.leader = None
        await self._close_session()  # ends the session: the lock goes with it
        self.cluster.forget(self)

    # The cluster's subscriptions, on the leader

    async def lead(self) -> None:
        await self.cluster.listen(self._events, self)
        records = await self.cluster.redis.hgetall(self._hash)
        self._add({key.decode(): value for key, value in records.items()})
        await self._prune()

    async def _prune(self) -> None:
        """Forget the subscriptions of processes that no longer listen on their changes channel."""
        nodes = {channel.node for channel in self._remote.values()}
        if not nodes or self.cdc is None:
            return
        prefix = f"{self.cluster.prefix}changes:"
        try:
            counts = await self.cluster.redis.pubsub_numsub(*(prefix + node for node in nodes))
        except (RedisError, OSError) as exc:
            log.warning("tenant %s: live processes not checked (%s)", self.tenant_id, exc)
            return
        dead = {name.decode().removeprefix(prefix) for name, count in counts if count == 0}
        gone: list[uuid.UUID] = []
        for key, channel in list(self._remote.items()):
            if channel.node in dead:
                del self._remote[key]
                gone += [sub.subscription_id for sub in self.cdc.registry.remove_channel(channel)]  # type: ignore[arg-type]
        if gone:
            log.info("tenant %s: dropped %d subscription(s) of processes gone: %s", self.tenant_id, len(gone), dead)
            self.cdc.delete_rows(gone)  # their realtime.subscription rows too: nobody else will
            with contextlib.suppress(RedisError, OSError):
                await self.cluster.redis.hdel(self._hash, *(str(sub_id) for sub_id in gone))

    async def follow(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.cluster.listen(self._events, None)
        remote, self._remote = self._remote, {}
        if self.cdc is not None:
            for channel in remote.values():
                self.cdc.registry.remove_channel(channel)  # type: ignore[arg-type]

    def on_event(self, event: dict[str, Any]) -> None:
        if event["op"] == "add":
            self._add({key: orjson.dumps(value) for key, value in event["records"].items()})
        elif event["op"] == "remove" and self.cdc is not None:
            for sub_id in event["ids"]:
                sub = self.cdc.registry.get(sub_id)
                if sub is not None and isinstance(sub.channel, RemoteChannel):
                    self.cdc.registry.remove_channel(sub.channel)  # type: ignore[arg-type]
                    self._remote.pop(sub.channel.key, None)

    def _add(self, records: dict[str, bytes]) -> None:
        """Put the other processes' subscriptions among `records` in the registry (or update
        their claims), then acknowledge every one to its process."""
        cdc = self.cdc
        if cdc is None:
            return
        acks: dict[str, list[str]] = {}
        added: list[Subscription] = []
        for sub_id, raw in records.items():
            record = orjson.loads(raw)
            node = record["node"]
            acks.setdefault(node, []).append(sub_id)
            if node == self.node:
                continue  # this process's own: in the registry already
            key = f"{node}/{record['channel']}"
            channel = self._remote.get(key)
            if channel is None:
                channel = self._remote[key] = RemoteChannel(
                    key, node, record["topic"], record["claims"], record.get("connection")
                )
            else:
                channel.claims = record["claims"]  # an access_token refresh
            if cdc.registry.get(sub_id) is not None:
                continue
            try:
                params = parse_params(record["params"])
            except SubscriptionParamsError as exc:
                log.warning("tenant %s: remote subscription %s ignored (%s)", self.tenant_id, sub_id, exc)
                continue
            added.append(
                Subscription(
                    channel,  # type: ignore[arg-type]
                    record["id"],
                    uuid.UUID(sub_id),
                    params,
                    record["legacy"],
                    start_lsn=record["start_lsn"],
                )
            )
        cdc.registry.add(added)
        for node, ids in acks.items():
            message = _ACK + orjson.dumps({"tenant": self.tenant_id, "ids": ids})
            spawn(self.cluster.redis.publish(f"{self.cluster.prefix}changes:{node}", message), group=self.tasks)

    # Peers

    async def reregister(self) -> None:
        if self.cdc is not None:
            records = self.cdc.shared_records()
            if records:
                await self.register(records)

    def acknowledged(self, ids: list[str]) -> None:
        for sub_id in ids:
            waiter = self._acks.get(sub_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def register(self, records: dict[str, bytes]) -> None:
        loop = asyncio.get_running_loop()
        waiters = {sub_id: loop.create_future() for sub_id in records}
        self._acks.update(waiters)
        try:
            async with self.cluster.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self._hash, mapping=records)  # type: ignore[arg-type]
                pipe.publish(self._events, b'{"op":"add","records":' + encode_records(records) + b"}")
                await pipe.execute()
            await asyncio.wait_for(asyncio.gather(*waiters.values()), REGISTER_TIMEOUT)
        except TimeoutError:
            log.warning(
                "tenant %s: no replication leader acknowledged %d subscription(s) within %.0f s",
                self.tenant_id,
                len(records),
                REGISTER_TIMEOUT,
            )
        except (RedisError, OSError) as exc:
            log.warning("tenant %s: subscriptions not shared with the cluster (%s)", self.tenant_id, exc)
        finally:
            for sub_id in waiters:
                self._acks.pop(sub_id, None)

    async def unregister(self, ids: list[str]) -> None:
        try:
            async with self.cluster.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self._hash, *ids)
                pipe.publish(self._events, orjson.dumps({"op": "remove", "ids": ids}))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("tenant %s: closed subscriptions not removed from the cluster (%s)", self.tenant_id, exc)

    async def publish(self, batches: dict[str, bytes]) -> None:
        prefix = self.cluster.prefix
        async with self.cluster.redis.pipeline(transaction=False) as pipe:
            for node, message in batches.items():
                pipe.publish(f"{prefix}changes:{node}", _CHANGES + message)
            await pipe.execute()
