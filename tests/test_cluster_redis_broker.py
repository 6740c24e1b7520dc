"""RedisBroker (cluster/broker.py) in one process, on the machine's Redis: two brokers stand for two
nodes, each with its own hub and stand-in subscribers (a codec and a connection that records frames,
as in test_hub.py). The end-to-end behaviour with real servers and clients is test_cluster_broker.py's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis
from cluster import REDIS_URL, needs_redis
from conftest import MS
from fakes import make_tenant
from wire import eventually

from realtime_core.cluster import RedisUnavailable, codec
from realtime_core.cluster.broker import RedisBroker
from realtime_core.hub import ChannelState, Hub, Publication, StreamKey
from realtime_core.protocol import V1

pytestmark = [pytest.mark.redis, needs_redis]

TENANT = make_tenant()
ROOM = StreamKey(TENANT.external_id, False, "room")


class Conn:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


class Subscriber:
    """What the hub needs of a joined channel."""

    def __init__(self) -> None:
        self.codec = V1
        self.conn = Conn()
        self.state = ChannelState.JOINED
        self.private = False
        self.reads_broadcast = True
        self.reads_presence = True
        self.replayed = None

    def shutdown(self, text: str) -> None:
        raise AssertionError(f"shut down: {text}")


def message(n: int) -> Publication:
    return Publication("realtime:room", "broadcast", orjson.dumps({"n": n}))


def listeners(prefix: str, key: StreamKey = ROOM) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", codec.channel(prefix, key))[1])
    finally:
        client.close()


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[RedisBroker, RedisBroker, str]]:
    prefix = f"rt:unit-{uuid.uuid4().hex[:8]}:"
    loop = asyncio.get_running_loop()
    made = [
        RedisBroker(
            Hub(),
            url=REDIS_URL,
            prefix=prefix,
            node_id=name,
            tenant_of={TENANT.external_id: TENANT}.get,
            clock=loop.time,
        )
        for name in ("a", "b")
    ]
    for broker in made:
        await broker.start()
    yield made[0], made[1], prefix
    for broker in made:
        await broker.stop()


async def join(broker: RedisBroker, subscriber: Subscriber, key: StreamKey = ROOM) -> None:
    """As socket.py joins: ready(), then subscribe() with no await in between."""
    await broker.ready(key)
    broker.subscribe(key, subscriber)


async def test_a_message_reaches_each_subscriber_of_each_node_once_and_in_order(nodes):
    a, b, _ = nodes
    on_a, on_b, sender = Subscriber(), Subscriber(), Subscriber()
    await join(a, on_a)
    await join(a, sender)
    await join(b, on_b)
    for n in range(50):
        assert a.publish(TENANT, ROOM, message(n), 0.0, exclude=sender) == 1  # on_a, at once
    await eventually(lambda: len(on_b.conn.frames) == 50, 5_000 * MS, "delivery on node b")
    expected = [V1.broadcast_json("realtime:room", "broadcast", orjson.dumps({"n": n})) for n in range(50)]
    assert on_a.conn.frames == expected  # not twice: its own messages coming back from Redis are skipped
    assert on_b.conn.frames == expected
    assert sender.conn.frames == []  # exclude: a subscriber of the origin node
    assert (a.published, b.received, a.received) == (50, 50, 0)


async def test_a_node_listens_from_its_first_join_to_its_last_leave(nodes):
    a, _, prefix = nodes
    first, second = Subscriber(), Subscriber()
    await join(a, first)
    assert listeners(prefix) == 1  # confirmed before ready() returned
    await join(a, second)
    a.unsubscribe(ROOM, first)
    assert a.channels() == 1
    a.unsubscribe(ROOM, second)
    assert a.channels() == 0
    await eventually(lambda: listeners(prefix) == 0, 5_000 * MS, "the unsubscribe")


async def test_a_join_that_never_subscribes_releases_the_channel(nodes):
    a, _, prefix = nodes
    await a.ready(ROOM)  # the client left before its channel started: no subscribe() follows
    await eventually(lambda: a.channels() == 0 and listeners(prefix) == 0, 5_000 * MS, "the release")


async def test_an_unreachable_redis_is_refused_at_start_without_its_password():
    broker = RedisBroker(
        Hub(),
        url="redis://:s3cret@127.0.0.1:1/0",
        prefix="rt:x:",
        node_id="x",
        tenant_of=lambda _: None,
        clock=asyncio.get_running_loop().time,
    )
    with pytest.raises(RedisUnavailable) as refused:
        await broker.start()
    assert "REDIS_URL redis://***@127.0.0.1:1/0 does not answer" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    await broker.stop()
