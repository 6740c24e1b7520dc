"""Broadcast across the processes of a cluster on Redis (cluster/broker.py, README "Scale out on Redis").

Three `realtime-core serve` nodes share one database and one Redis (a cluster name of the test's
own); clients connected to different nodes must see one system: every broadcast exactly once, in
the order it was sent, `self: false` respected whichever node the sender is on. A Redis restart
under load: the nodes reconnect and resubscribe, count what could not be sent, and deliver what
is sent after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from cluster import TENANT, PrivateRedis, channel, cluster_env, needs_redis, nodes, shard_subscribers, wait_subscribers
from conftest import MS, admin_headers, make_token
from jsclient import JsDriver, binary
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from wire import V1, Frame, RawClient, eventually, metric

pytestmark = [pytest.mark.pg, pytest.mark.redis, needs_redis]

DELIVERY = 5_000 * MS
COUNT = 20


@pytest.fixture
def env() -> dict[str, str]:
    return cluster_env()


@pytest.fixture
def three(fresh_database, env):
    with nodes(fresh_database, env, 3) as started:
        yield started


def options(*, self: bool = False) -> dict[str, Any]:
    return {"config": {"broadcast": {"ack": False, "self": self}, "presence": {"key": ""}, "private": False}}


@pytest.fixture
async def py_clients() -> AsyncIterator[Callable[[str], AsyncRealtimeClient]]:
    made: list[AsyncRealtimeClient] = []

    def make(ws_url: str) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(ws_url, make_token(), auto_reconnect=False)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def py_join(client: AsyncRealtimeClient, topic: str, got: list[Any], *, self: bool = False) -> Any:
    channel_ = client.channel(topic, options(self=self))
    channel_.on_broadcast("*", got.append)
    states: list[RealtimeSubscribeStates] = []
    await channel_.subscribe(lambda state, _error: states.append(state))
    await eventually(lambda: states, what="the subscribe status")
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]
    return channel_


def broadcast(event: str, payload: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": payload}


def send(js: JsDriver, channel_: str, event: str, payload: Any) -> None:
    """Send a broadcast from `channel_` without waiting for its result (in order with the others)."""
    js.send({"op": "send", "channel": channel_, "message": broadcast(event, payload)})


async def arrived(js: JsDriver, channel_: str, event: str, match: Callable[[Any], bool] = lambda _: True) -> None:
    """Wait until channel `channel_` got broadcast `event` (whose payload `match`es)."""
    await js.wait_for(
        lambda ev: (
            ev["ev"] == "broadcast"
            and ev["channel"] == channel_
            and ev["payload"]["event"] == event
            and match(ev["payload"]["payload"])
        ),
        timeout=DELIVERY,
    )


async def test_realtime_js_broadcast_reaches_every_node_once_in_order(three, topic):
    a, b, c = three
    async with JsDriver() as js:
        await js.join("sender", a.ws_url, make_token(), topic)
        await js.join("local", a.ws_url, make_token(), topic)
        await js.join("on_b", b.ws_url, make_token(), topic)
        await js.join("on_c", c.ws_url, make_token(), topic)
        # Joined means cluster-wide: no wait for the nodes' Redis subscriptions.
        for n in range(COUNT):
            send(js, "sender", "m", {"n": n})
        for name in ("local", "on_b", "on_c"):
            await arrived(js, name, "m", lambda payload: payload["n"] == COUNT - 1)
        # The sender (self: false) gets none of its own, from no node: a later message from node C
        # reaches it after anything its own could have caused.
        send(js, "on_c", "marker", {})
        for name in ("sender", "local", "on_b"):
            await arrived(js, name, "marker")
        sent = [broadcast("m", {"n": n}) for n in range(COUNT)]
        marker = broadcast("marker", {})
        assert js.received("sender") == [marker]
        for name in ("local", "on_b"):
            assert js.received(name) == [*sent, marker], name
        assert js.received("on_c") == sent  # self: false on node C too


BINARY = bytes(range(256))


async def test_a_binary_broadcast_crosses_nodes_as_sent_and_skips_v1_receivers_there(three, topic):
    a, b, c = three
    async with JsDriver() as js:
        await js.join("sender", a.ws_url, make_token(), topic, vsn="2.0.0")
        await js.join("v2_on_b", b.ws_url, make_token(), topic, vsn="2.0.0")
        await js.join("v1_on_c", c.ws_url, make_token(), topic, vsn="1.0.0")
        send(js, "sender", "bin", binary(BINARY))
        send(js, "sender", "after", {"n": 1})
        for name in ("v2_on_b", "v1_on_c"):
            await arrived(js, name, "after")
        arraybuffer = {**binary(BINARY), "class": "ArrayBuffer"}
        assert js.received("v2_on_b") == [broadcast("bin", arraybuffer), broadcast("after", {"n": 1})]
        assert js.received("v1_on_c") == [broadcast("after", {"n": 1})]  # binary: V2 receivers only, on every node


async def test_python_client_broadcast_crosses_nodes_once_and_self_true_once(three, env, topic, py_clients):
    a, b, c = three
    got_a: list[Any] = []
    got_b: list[Any] = []
    got_c: list[Any] = []
    await py_join(py_clients(a.ws_url), topic, got_a)
    sender = await py_join(py_clients(b.ws_url), topic, got_b, self=True)
    await py_join(py_clients(c.ws_url), topic, got_c)
    for n in range(COUNT):
        await sender.send_broadcast("m", {"n": n})
    sent = [{"event": "m", "payload": {"n": n}} for n in range(COUNT)]
    await eventually(lambda: len(got_a) >= COUNT and len(got_c) >= COUNT and len(got_b) >= COUNT, DELIVERY, "delivery")
    # A marker through the same path: a duplicate would have arrived before it.
    await sender.send_broadcast("marker", {})
    await eventually(lambda: len(got_a) > COUNT and len(got_c) > COUNT and len(got_b) > COUNT, DELIVERY, "the marker")
    marker = {"event": "marker", "payload": {}}
    assert got_a == got_b == got_c == [*sent, marker]
    # Node A's time series holds the pub/sub lag of what it received from node B.
    await eventually(lambda: any(v > 0 for v in lag_series(a)), DELIVERY, "a cluster_lag_ms sample")
    assert not any(lag_series(b))  # node B received nothing from the others


def series(node, name: str) -> list[float]:
    """The last minute of the default tenant's time series `name` on `node` (admin API)."""
    response = httpx.get(
        f"{node.http_url}/admin/v1/tenants/{TENANT}/timeseries",
        params={"series": name, "window": "1m"},
        headers=admin_headers(),
    )
    assert response.status_code == 200, response.text
    return response.json()["series"][name]


def lag_series(node) -> list[float]:
    return series(node, "cluster_lag_ms")


async def test_rest_broadcast_on_one_node_reaches_another(three, env, topic):
    a, _, c = three
    async with await RawClient.open(c.socket_url(make_token(), V1), V1) as client:
        await client.join(f"realtime:{topic}")
        body = {"messages": [{"topic": topic, "event": "rest", "payload": {"via": "a"}}]}
        headers = {"Authorization": f"Bearer {make_token(role='service_role')}"}
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{a.http_url}/api/broadcast", json=body, headers=headers)
        assert response.status_code == 202, response.text
        frame = await client.expect_event(f"realtime:{topic}", "broadcast", DELIVERY)
        assert frame.payload["payload"] == {"via": "a"}
        await client.nothing_pending(lambda f: isinstance(f, Frame) and f.event == "broadcast")
    # Accepted where it was sent, delivered where its receiver is: summed over the nodes, each once.
    await eventually(lambda: sum(series(c, "deliveries.rest")) == 1, DELIVERY, "node C's delivery sampled")
    await eventually(lambda: sum(series(a, "messages.rest")) == 1, DELIVERY, "node A's accepted message sampled")
    assert sum(series(a, "deliveries.rest")) == 0
    assert sum(series(c, "messages.rest")) == 0


async def test_a_node_listens_on_a_channel_only_while_it_has_local_subscribers(three, env, topic):
    a, b, _ = three
    url = env["REDIS_URL"]
    name = channel(env, topic)
    assert shard_subscribers(url, name) == 0
    first = await RawClient.open(a.socket_url(make_token(), V1), V1)
    second = await RawClient.open(a.socket_url(make_token(), V1), V1)
    other = await RawClient.open(b.socket_url(make_token(), V1), V1)
    try:
        await first.join(f"realtime:{topic}")
        await second.join(f"realtime:{topic}")
        assert shard_subscribers(url, name) == 1  # subscribed before the join's reply; one per node
        await other.join(f"realtime:{topic}")
        assert shard_subscribers(url, name) == 2
        await first.close()
        await second.nothing_pending()
        assert shard_subscribers(url, name) == 2  # node A still has a subscriber
        await second.close()
        await asyncio.to_thread(wait_subscribers, url, name, 1)
        await other.close()
        await asyncio.to_thread(wait_subscribers, url, name, 0)
    finally:
        for client in (first, second, other):
            await client.close()


class Relay:
    """A raw client on node `a` broadcasting numbered messages on `topic` to a raw client on node `b`."""

    def __init__(self, a: Any, b: Any, topic: str) -> None:
        self.a, self.b, self.topic = a, b, f"realtime:{topic}"
        self.received: list[int] = []
        self.sent = 0

    async def __aenter__(self) -> Relay:
        self.publisher = await RawClient.open(self.a.socket_url(make_token(), V1), V1)
        self.receiver = await RawClient.open(self.b.socket_url(make_token(), V1), V1)
        self.join = await self.publisher.join(self.topic)
        await self.receiver.join(self.topic)
        self.reading = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reading.cancel()
        await self.publisher.close()
        await self.receiver.close()

    async def _receive(self) -> None:
        while True:
            frame = await self.receiver.recv(timeout=60_000 * MS)
            if isinstance(frame, Frame) and frame.event == "broadcast":
                self.received.append(frame.payload["payload"]["n"])

    async def send(self, count: int) -> None:
        for _ in range(count):
            payload = {"type": "broadcast", "event": "m", "payload": {"n": self.sent}}
            await self.publisher.push(self.topic, "broadcast", payload, join_ref=self.join.ref)
            self.sent += 1
            await asyncio.sleep(2 * MS)

    async def both_connected(self, connected: int, within_ms: int, what: str) -> None:
        await eventually(
            lambda: all(metric(n.http_url, "realtime_cluster_connected") == connected for n in (self.a, self.b)),
            within_ms * MS,
            what,
        )

    def counted(self) -> tuple[float, float]:
        """Node a's messages (dropped, published) to Redis."""
        url = self.a.http_url
        return metric(url, "realtime_cluster_dropped_total"), metric(url, "realtime_cluster_published_total")


async def test_redis_restarted_under_load_reconnects_counts_drops_and_delivers_later_broadcasts(fresh_database, topic):
    with PrivateRedis() as private:
        env = cluster_env(private.url)
        with nodes(fresh_database, env, 2) as (a, b):
            async with Relay(a, b, topic) as relay:
                received = relay.received
                await relay.send(50)
                await eventually(lambda: len(received) == 50, DELIVERY, "delivery before the restart")
                private.kill()
                await relay.send(50)  # while Redis is down: dropped, and counted
                private.start()
                await relay.both_connected(1, 10_000, "both nodes reconnected")
                await asyncio.to_thread(wait_subscribers, private.url, channel(env, topic), 2)  # resubscribed
                before = len(received)
                first_after = relay.sent
                await relay.send(50)
                await eventually(
                    lambda: received and received[-1] == relay.sent - 1, DELIVERY, "delivery after the restart"
                )
            dropped, published = relay.counted()
            assert dropped > 0
            assert published + dropped == relay.sent  # every message either sent to Redis or counted as dropped
            assert metric(a.http_url, "realtime_cluster_reconnects_total") >= 1
            assert metric(b.http_url, "realtime_cluster_reconnects_total") >= 1
            # Order kept, nothing twice, and everything sent once both were back arrived.
            assert received == sorted(set(received))
            assert set(range(first_after, relay.sent)) <= set(received[before:])
            assert "redis: reconnected after" in a.log()


async def test_a_frozen_redis_is_noticed_within_the_bound_and_recovered_from(fresh_database, topic):
    """A Redis that stops answering without closing anything (SIGSTOP, as a network partition looks):
    the nodes take it for cut after 3.5 s of silence, count what they could not send, and resume."""
    with PrivateRedis() as private:
        env = cluster_env(private.url)
        with nodes(fresh_database, env, 2) as (a, b):
            async with Relay(a, b, topic) as relay:
                received = relay.received
                await relay.send(20)
                await eventually(lambda: len(received) == 20, DELIVERY, "delivery before the freeze")
                private.freeze()
                await relay.send(20)
                await relay.both_connected(0, 8_000, "both nodes taking the silent Redis for cut")
                await relay.send(20)  # while cut: dropped at once, and counted
                private.thaw()
                await relay.both_connected(1, 10_000, "both nodes reconnected")
                await asyncio.to_thread(wait_subscribers, private.url, channel(env, topic), 2)
                first_after = relay.sent
                await relay.send(20)
                await eventually(
                    lambda: received and received[-1] == relay.sent - 1, DELIVERY, "delivery after the thaw"
                )
            dropped, published = relay.counted()
            assert dropped >= 20  # at least those sent while the node knew Redis was cut
            assert published + dropped == relay.sent
            assert len(received) == len(set(received))  # nothing twice
            assert received[received.index(first_after) :] == list(range(first_after, relay.sent))
            assert "no answer to PING within 3.5 s" in b.log()
