"""This process as a node of the cluster: liveness, its public record, and the reaping of dead
nodes (docs/design.md §6); Cluster wires the presence and the counters to the app.

Keys (after the cluster's prefix, cluster.keys()):
- `nodes`: hash node id → JSON record (id, address, pid, started_at, version, last_seen,
  connections, channels, per-tenant counts and errors, pub/sub lag), rewritten at every beat;
  a reaped node's record stays, marked dead (`died_at`), for FORGET_DEAD_S.
- `alive:<node>`: the liveness key, set with a TTL of `ttl` at every beat (every ttl/3 s).
- `reap:<node>`: taken (SET NX) by the one node that clears a dead node's state.
- `ask` (pub/sub): questions to every node (ask()): `{"q": name, "a": args, "r": reply channel}`;
  each live node answers on the reply channel with what its `node_queries[name](args)` returns.
  A note (tell()) has no reply channel: every node runs `node_queries[name](args)`, nobody answers.
- `to:<node>` (pub/sub): notes to one node (tell(…, node=…)), handled as above.

Every beat a node also sweeps: a registered node whose liveness key has expired is dead, and
the node that takes its reap key removes its presences everywhere (presence.py) and its
connections from the cluster's counts (counters.py). A node dead at t is seen dead by t +
ttl (its key's last refresh was before t) and reaped by the next sweep: within ttl + ttl/3."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .. import __version__
from ..incidents import Incidents
from ..usage import UsageMeter
from . import RedisUnavailable, keys
from .counters import ClusterCounters
from .presence import PresenceBroker, RedisPresence

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..broker import Broker
    from ..config import Settings
    from ..hub import Hub
    from ..socket import RealtimeSocket
    from ..tenants import Tenant

__all__ = ["Cluster"]

log = logging.getLogger(__name__)

FORGET_DEAD_S = 600  # how long a dead node's record is still listed (GET /admin/v1/nodes)
_REAP_LOCK_MS = 30_000  # a reaper that dies mid-way lets another try after this
_LAG_POINTS = 60  # per-beat lag values kept in the node's record
ASK_TIMEOUT = 2.0  # s: how long ask() waits for the live nodes' answers
_LEAVE_TIMEOUT = 6.0  # s: stop() gives up clearing this node's state after this (Redis unreachable)
_RESTORE_TIMEOUT = 2.0  # s: how long a node restoring itself waits for its presences to be written
_CONNECT_TIMEOUT = 2.0  # s: connecting to Redis (a cut network must not hang the beat or stop())


class Host(Protocol):
    """What the cluster reads of the server process (app.App)."""

    settings: Settings
    hub: Hub
    usage: UsageMeter
    incidents: Incidents
    sockets: set[RealtimeSocket]
    port: int | None
    started_at: float
    node_id: str
    now: Callable[[], float]
    # What other nodes may ask this one (ask()): name → function of the question's arguments,
    # answering plain JSON values. The admin modules register theirs.
    node_queries: dict[str, Callable[[dict[str, Any]], Any]]

    @property
    def tenants(self) -> Iterable[Tenant]: ...


class Cluster:
    """This node: its presence replica, its counts, its liveness and the sweep of dead nodes."""

    def __init__(self, host: Host, tenant: Callable[[str], Tenant | None], messages: Broker) -> None:
        """`messages`: the broker that carries messages (broker.py); self.broker wraps it
        with the cluster's presences."""
        from redis.asyncio import Redis  # the `cluster` extra: imported only in a cluster

        settings = host.settings
        assert settings.redis_url is not None
        self.host = host
        self.node_id = host.node_id
        self.prefix = keys(settings)
        self.ttl_ms = settings.cluster_node_ttl_ms
        self.interval = settings.cluster_sync_interval_ms / 1000
        # Named, so that an operator (or a test) can tell this node's connections in CLIENT LIST.
        self.redis: Redis = Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            client_name=f"{self.prefix}{self.node_id}",
            socket_connect_timeout=_CONNECT_TIMEOUT,
        )
        self.presence = RedisPresence(host.hub, self.redis, self.prefix, self.node_id, tenant, host.now)
        self.counters = ClusterCounters(
            self.redis, self.prefix, self.node_id, lambda: host.tenants, host.usage, host.now, self.ttl_ms
        )
        self.broker = PresenceBroker(messages, host.hub, self.presence)
        self.presence.live_nodes = self._live_nodes
        self.nodes_key = f"{self.prefix}nodes"
        self.live: list[str] = []  # the live nodes at the last sweep, this one included
        self.lag_series: list[tuple[int, float | None]] = []  # (unix s, max pub/sub lag ms) per beat
        self.reaped = 0
        self._beaten = False  # the first beat registered this node
        self._tasks: list[asyncio.Task[None]] = []
        self.ask_channel = f"{self.prefix}ask"
        self.own_channel = f"{self.prefix}to:{self.node_id}"
        self._questions: Any = None  # the PubSub of `ask`

    def alive_key(self, node_id: str) -> str:
        return f"{self.prefix}alive:{node_id}"

    async def start(self) -> None:
        """Register this node, load the cluster's presences and start beating and syncing.
        Raises RedisUnavailable when Redis does not answer."""
        from redis.exceptions import RedisError

        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            await self.redis.aclose()
            raise RedisUnavailable(f"REDIS_URL does not answer: {exc}") from None
        await self._beat()
        node_ids = list(await self.redis.hkeys(self.nodes_key))
        await self.presence.start(node_ids)
        self.counters.start()
        self.host.usage.cluster = self.counters
        await self._sweep()
        self._questions = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._questions.subscribe(self.ask_channel, self.own_channel)
        self._tasks = [
            asyncio.create_task(self._beat_forever(), name="cluster liveness"),
            asyncio.create_task(self._sync_forever(), name="cluster counts sync"),
            asyncio.create_task(self._answer_forever(), name="cluster questions"),
        ]
        name = self.host.settings.cluster_name
        log.info("cluster %s: node %s joined (%d nodes live)", name, self.node_id, len(self.live))

    async def stop(self) -> None:
        """Leave the cluster: write the queued changes, then clear this node's state at once
        (as a reaper would) so that nobody waits for its liveness key to expire."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._questions is not None:
            await self._questions.aclose()
        self.host.usage.cluster = None
        try:
            await asyncio.wait_for(self._leave(), _LEAVE_TIMEOUT)
        except Exception as exc:  # Redis unreachable: the others reap this node when its key expires
            log.warning("cluster: leaving uncleanly (the others reap this node within its TTL): %r", exc)
        await self.redis.aclose()

    async def _leave(self) -> None:
        await self.presence.stop()
        await self.counters.stop()
        await self.redis.delete(self.alive_key(self.node_id))
        await self._reap(self.node_id)
        await self.redis.hdel(self.nodes_key, self.node_id)

    # Liveness

    def record(self) -> dict[str, Any]:
        """This node's public record (GET /admin/v1/nodes)."""
        host = self.host
        tenants: dict[str, dict[str, Any]] = {}
        for socket in host.sockets:
            counts = tenants.setdefault(socket.tenant.external_id, {"connections": 0, "channels": 0})
            counts["connections"] += 1
            counts["channels"] += len(socket.channels)
        for tenant in host.tenants:
            totals, _ = host.incidents.counts(tenant.external_id)
            if totals or tenant.users:
                counts = tenants.setdefault(tenant.external_id, {"connections": 0, "channels": 0})
                counts["users"] = tenant.users
                counts["errors"] = totals
        port = host.port
        return {
            "id": self.node_id,
            "address": f"{host.settings.host}:{port}" if port is not None else None,
            "pid": os.getpid(),
            "started_at": host.started_at,
            "version": __version__,
            "last_seen": time.time(),
            "connections": sum(t["connections"] for t in tenants.values()),
            "channels": sum(t["channels"] for t in tenants.values()),
            "tenants": tenants,
            "pubsub_lag_ms": self.lag_series,
        }

    async def _beat(self) -> None:
        lag = self.presence.max_lag_ms()
        self.lag_series.append((int(time.time()), round(lag, 3) if lag is not None else None))
        del self.lag_series[:-_LAG_POINTS]
        alive = self.alive_key(self.node_id)
        if not await self.redis.pexpire(alive, self.ttl_ms):
            if self._beaten:
                # The key expired (this node stalled for a TTL, and may have been reaped) or
                # Redis restarted empty: this node's presences are written again before its key
                # is (a node resynchronising meanwhile takes a live node's hash as it finds it).
                log.warning("cluster: node %s was seen dead or Redis lost its state; restoring it", self.node_id)
                self.presence.queue_own()
                await self.presence.flushed(_RESTORE_TIMEOUT)
                self.counters.restore()
                await self.redis.delete(f"{self.prefix}reap:{self.node_id}")  # reapable again
            await self.redis.set(alive, b"1", px=self.ttl_ms)
            if self._beaten:
                await self.presence.resync()  # writes this node's presences once more, too
        # After the key: a record without a key is a dead node's, which a sweep reaps.
        await self.redis.hset(self.nodes_key, self.node_id, orjson.dumps(self.record()))
        self._beaten = True

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self._beat()
                await self._sweep()
            except Exception as exc:
                log.warning("cluster: liveness beat failed (Redis unreachable?): %s", exc)

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.counters.sync(self.live)
            except Exception as exc:
                log.warning("cluster: counts sync failed (Redis unreachable?): %s", exc)

    async def records(self) -> list[dict[str, Any]]:
        """Every node's record, with `alive` read from its liveness key now."""
        stored = await self.redis.hgetall(self.nodes_key)
        ids = list(stored)
        pipe = self.redis.pipeline(transaction=False)
        for node in ids:
            pipe.exists(self.alive_key(node))
        alive = await pipe.execute() if ids else []
        rows = []
        for node, live in zip(ids, alive, strict=True):
            record = orjson.loads(stored[node])
            record["alive"] = bool(live)
            rows.append(record)
        return rows

    async def _live_nodes(self) -> set[str]:
        return {r["id"] for r in await self.records() if r["alive"]}

    async def _sweep(self) -> None:
        """Find the dead nodes, reap those nobody is reaping, forget long-dead records."""
        now = time.time()
        live: list[str] = []
        for record in await self.records():
            node = record["id"]
            if record["alive"]:
                live.append(node)
            elif "died_at" in record:
                if now - record["died_at"] > FORGET_DEAD_S:
                    await self.redis.hdel(self.nodes_key, node)
            elif node != self.node_id and await self.redis.set(
                f"{self.prefix}reap:{node}", self.node_id, nx=True, px=_REAP_LOCK_MS
            ):
                if not await self._reap(node):
                    await self.redis.delete(f"{self.prefix}reap:{node}")  # for its next death
                    continue
                record["died_at"] = now
                await self.redis.hset(self.nodes_key, node, orjson.dumps(record))
        self.live = live
        # A node whose record Redis lost is reaped by nobody: its presences leave after 2 TTLs.
        self.presence.drop_missing(set(live), 2 * self.ttl_ms / 1000)

    async def _reap(self, node: str) -> bool:
        """Clear what the dead `node` left; False when it turned out alive (it beat again)."""
        alive = self.alive_key(node)
        presences = await self.presence.reap(node, alive)
        tenants = await self.counters.reap(node, alive)
        if presences < 0 or tenants < 0:
            log.info("cluster: node %s beat again before it was reaped", node)
            return False
        if node != self.node_id:
            self.reaped += 1
            log.warning(
                "cluster: node %s is dead; removed its %d presences and its connections of %d tenants",
                node,
                presences,
                tenants,
            )
        return True

    # Questions to every node (admin views whose rows live in each node's memory)

    async def ask(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Ask every live node `name`(`args`); their answers by node id. Waits at most
        ASK_TIMEOUT for the nodes live now (their liveness keys, read first: a node that joined
        since the last sweep is waited for too); a node that does not answer in time is left out."""
        reply = f"{self.prefix}reply:{uuid.uuid4().hex}"
        answers: dict[str, Any] = {}
        listener = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            expected = await self._live_nodes() | {self.node_id}
            await listener.subscribe(reply)
            await self.redis.publish(self.ask_channel, orjson.dumps({"q": name, "a": args, "r": reply}))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ASK_TIMEOUT
            while not expected <= set(answers) and (left := deadline - loop.time()) > 0:
                message = await listener.get_message(timeout=left)
                if message is not None and message.get("type") == "message":
                    answer = orjson.loads(message["data"])
                    answers[answer["n"]] = answer["d"]
        finally:
            await listener.aclose()
        return answers

    async def tell(self, name: str, args: dict[str, Any], node: str | None = None) -> None:
        """Have every live node (or only `node`) run `name`(`args`), without waiting for it;
        a node that does not listen at the time never gets it."""
        channel = self.ask_channel if node is None else f"{self.prefix}to:{node}"
        await self.redis.publish(channel, orjson.dumps({"q": name, "a": args}))

    async def _answer_forever(self) -> None:
        while True:
            try:
                async for message in self._questions.listen():
                    if message.get("type") == "message":
                        await self._answer(message["data"])
                # listen() ends at once when nothing is subscribed (a failed resubscription).
                raise ConnectionError("not subscribed to the questions channel")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: questions channel lost (%s); subscribing again", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self._questions.aclose()
                self._questions = self.redis.pubsub(ignore_subscribe_messages=True)
                with contextlib.suppress(Exception):
                    await self._questions.subscribe(self.ask_channel, self.own_channel)

    async def _answer(self, data: str) -> None:
        question = orjson.loads(data)
        query = self.host.node_queries.get(question.get("q"))
        if query is None:
            return  # a question a newer node asks: it gets no answer from this one
        try:
            answer = query(question.get("a") or {})
        except Exception:
            log.exception("cluster: answering %r failed", question.get("q"))
            return
        if "r" not in question:
            return  # a note (tell()): nobody waits for an answer
        await self.redis.publish(question["r"], orjson.dumps({"n": self.node_id, "d": answer}))
