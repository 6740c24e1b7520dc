"""Delivery traces and the live tail across the nodes of a cluster (README, "Scale out on Redis"):
`realtime-core serve` nodes on one database and the machine's Redis, realtime-py clients, and
the admin API asked on a node the traced subject (or the tail's subscribers) are not on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from cluster import TENANT, cluster_env, needs_redis, nodes
from conftest import MS, ServerProcess, admin_headers, make_token
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_admin_tail import Viewer
from test_cluster_leader import leader_of
from test_postgres_changes import new_table, run

from realtime_core.admin.tail import GATHER

pytestmark = [pytest.mark.pg, pytest.mark.redis, needs_redis]

DELIVERY = 5_000 * MS
TRACES = f"/admin/v1/tenants/{TENANT}/traces"


@pytest.fixture
def two(fresh_database):
    with nodes(fresh_database, cluster_env(), 2) as started:
        yield started


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[ServerProcess, str], AsyncRealtimeClient]]:
    made: list[AsyncRealtimeClient] = []

    def make(node: ServerProcess, sub: str) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(node.ws_url, make_token("authenticated", sub=sub), auto_reconnect=False)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def joined(client: AsyncRealtimeClient, topic: str, got: asyncio.Queue[Any] | None = None) -> Any:
    channel = client.channel(topic, {"config": {"broadcast": {"ack": False, "self": False}}})
    if got is not None:
        channel.on_broadcast("*", got.put_nowait)
    states: list[RealtimeSubscribeStates] = []
    await channel.subscribe(lambda state, _error: states.append(state))
    async with asyncio.timeout(DELIVERY):
        while not states:
            await asyncio.sleep(0.01)
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]
    return channel


async def admin(node: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http_url, headers=admin_headers()) as http:
        return await http.request(method, path, **kwargs)


async def node_id(node: ServerProcess) -> str:
    rows = (await admin(node, "GET", "/admin/v1/nodes")).json()["data"]
    return next(row["id"] for row in rows if row["pid"] == node.proc.pid)


async def decisions(node: ServerProcess, trace: str, count: int) -> dict[str, Any]:
    """The trace as `node` reads it, once it holds `count` decisions."""
    async with asyncio.timeout(DELIVERY):
        while True:
            response = await admin(node, "GET", f"{TRACES}/{trace}")
            assert response.status_code == 200, response.text
            body = response.json()
            if len(body["decisions"]) >= count:
                return body
            await asyncio.sleep(0.05)


async def test_a_trace_started_on_one_node_records_the_decisions_of_another(two, clients, topic):
    a, b = two
    a_id, b_id = await node_id(a), await node_id(b)
    got: asyncio.Queue[Any] = asyncio.Queue()
    bob = await joined(clients(b, "bob"), topic, got)
    alice = await joined(clients(a, "alice"), topic)

    started = await admin(a, "POST", TRACES, json={"topic": topic, "sub": "bob", "seconds": 60})
    assert started.status_code == 201, started.text
    trace = started.json()
    assert trace["nodes"] == sorted([a_id, b_id])

    await alice.send_broadcast("hello", {"n": 1})  # from A, delivered to bob on B
    assert (await asyncio.wait_for(got.get(), DELIVERY))["event"] == "hello"
    await bob.send_broadcast("mine", {"n": 2})  # bob's own, with `self: false`
    # Each node records its own decisions: A, where both messages were also delivered (to alice,
    # and from B's Redis channel), has no channel of bob's.
    read = await decisions(a, trace["id"], 4)
    assert read["nodes"] == sorted([a_id, b_id])
    on_b = [d for d in read["decisions"] if d["node"] == b_id]
    assert [(d["event"], d["delivered"], d["reason"], d["decided_on"]) for d in on_b] == [
        ("hello", True, None, b_id),
        ("mine", False, "self", b_id),
    ]
    on_a = [d for d in read["decisions"] if d["node"] == a_id]
    assert sorted((d["event"], d["delivered"], d["reason"]) for d in on_a) == [
        ("hello", False, "not_joined"),
        ("mine", False, "not_joined"),
    ]
    assert read["decision_count"] == 4 and read["overflow"] == 0
    assert [d["at"] for d in read["decisions"]] == sorted(d["at"] for d in read["decisions"])

    # A connection of another node may be traced from this one.
    connection = on_b[0]["connection"]
    by_connection = await admin(a, "POST", TRACES, json={"topic": topic, "connection": connection})
    assert by_connection.status_code == 201, by_connection.text
    gone = await admin(a, "POST", TRACES, json={"topic": topic, "connection": "nope"})
    assert gone.status_code == 422

    listed = (await admin(b, "GET", TRACES)).json()
    assert listed["nodes"] == sorted([a_id, b_id])
    row = next(r for r in listed["data"] if r["id"] == trace["id"])
    assert (row["decision_count"], row["active"], row["nodes"]) == (4, True, sorted([a_id, b_id]))

    # Stopped on A: gone everywhere.
    assert (await admin(a, "DELETE", f"{TRACES}/{trace['id']}")).status_code == 204
    assert (await admin(b, "GET", f"{TRACES}/{trace['id']}")).status_code == 404
    assert (await admin(a, "DELETE", f"{TRACES}/{by_connection.json()['id']}")).status_code == 204


async def test_the_leader_records_postgres_changes_decisions_for_a_subject_on_a_follower(
    fresh_database, server_factory, topic
):
    env = cluster_env()
    servers = [server_factory(env, database_url=fresh_database) for _ in range(2)]
    leader = await leader_of(servers)
    follower = next(s for s in servers if s is not leader)
    leader_id, follower_id = await node_id(leader), await node_id(follower)
    with psycopg.connect(fresh_database, autocommit=True) as db:
        table = new_table(db, "id int primary key, body text")
        started = await admin(follower, "POST", TRACES, json={"topic": topic, "sub": "pia"})
        assert started.status_code == 201, started.text
        by_sub = started.json()["id"]
        received: asyncio.Queue[Any] = asyncio.Queue()
        client = AsyncRealtimeClient(follower.ws_url, make_token("authenticated", sub="pia"), auto_reconnect=False)
        await client.connect()
        try:
            subscribed = asyncio.Event()
            channel = client.channel(topic)
            channel.on_postgres_changes(
                "INSERT", schema="public", table=table, filter="id=eq.1", callback=received.put_nowait
            )
            channel.on_system(lambda payload: subscribed.set())
            await channel.subscribe()
            await asyncio.wait_for(subscribed.wait(), 10 * DELIVERY)
            run(db, "insert into {t} values (2, 'filtered out')", table)
            run(db, "insert into {t} values (1, 'wanted')", table)
            got = await asyncio.wait_for(received.get(), 2 * DELIVERY)
            assert got["data"]["record"] == {"id": 1, "body": "wanted"}

            read = await decisions(leader, by_sub, 2)
            changes = [d for d in read["decisions"] if d["kind"] == "postgres_changes"]
            assert [(d["event"], d["delivered"], d["reason"], d["node"], d["decided_on"]) for d in changes] == [
                ("INSERT", False, "pg_filter", follower_id, leader_id),
                ("INSERT", True, None, follower_id, leader_id),
            ]
            # The leader knows the follower's connection ids too: a trace of one connection.
            started = await admin(leader, "POST", TRACES, json={"topic": topic, "connection": changes[0]["connection"]})
            assert started.status_code == 201, started.text
            run(db, "insert into {t} values (3, 'filtered out')", table)
            [refused] = (await decisions(follower, started.json()["id"], 1))["decisions"]
            assert (refused["reason"], refused["node"], refused["connection"]) == (
                "pg_filter",
                follower_id,
                changes[0]["connection"],
            )
        finally:
            await client.close()


async def test_a_tail_on_one_node_shows_what_another_delivers_once(two, clients, topic):
    a, b = two
    a_id, b_id = await node_id(a), await node_id(b)
    on_b: asyncio.Queue[Any] = asyncio.Queue()
    sender = await joined(clients(b, "sender"), topic)
    await joined(clients(b, "receiver"), topic, on_b)
    viewer = await Viewer.open(a.http_url, f"topic={topic}&kinds=broadcast")
    try:
        assert viewer.status == 200
        # Delivered on B only (nobody on A listens), shown once on A.
        await sender.send_broadcast("one", {"n": 1})
        assert (await asyncio.wait_for(on_b.get(), DELIVERY))["event"] == "one"
        [(kind, data)] = await viewer.events_until("one")
        assert kind == "broadcast" and data["payload"]["payload"] == {"n": 1} and data["nodes"] == [b_id]

        # Delivered on both nodes: still shown once, naming both.
        on_a: asyncio.Queue[Any] = asyncio.Queue()
        await joined(clients(a, "watcher"), topic, on_a)
        await sender.send_broadcast("two", {"n": 2})
        assert (await asyncio.wait_for(on_a.get(), DELIVERY))["event"] == "two"
        [(kind, data)] = await viewer.events_until("two")
        assert data["nodes"] == sorted([a_id, b_id])
        # No second copy follows: the next event is the next message.
        await asyncio.sleep(GATHER)
        await sender.send_broadcast("three", {"n": 3})
        [(kind, data)] = await viewer.events_until("three")
        assert data["payload"]["payload"] == {"n": 3}

        assert (await asyncio.wait_for(on_a.get(), DELIVERY))["event"] == "three"
        # Two identical messages in a row are two messages (told apart by their origin, not their
        # content), each shown once with both nodes.
        for _ in range(2):
            await sender.send_broadcast("same", {"n": 4})
        for _ in range(2):
            assert (await asyncio.wait_for(on_a.get(), DELIVERY))["event"] == "same"
        [(_, first)] = await viewer.events_until("same")
        [(_, second)] = await viewer.events_until("same")
        assert first["nodes"] == second["nodes"] == sorted([a_id, b_id])
        await sender.send_broadcast("four", {"n": 5})
        [(_, data)] = await viewer.events_until("four")  # and nothing in between
    finally:
        await viewer.close()


async def test_identical_messages_delivered_on_different_nodes_are_two_messages_in_the_tail(two, clients, topic):
    """Told apart by their origin, not their content: x on A and y on B (neither gets its own
    broadcasts) each send the same message within a second; each is delivered on the other's
    node only, and the tail shows both."""
    a, b = two
    a_id, b_id = await node_id(a), await node_id(b)
    on_a: asyncio.Queue[Any] = asyncio.Queue()
    on_b: asyncio.Queue[Any] = asyncio.Queue()
    x = await joined(clients(a, "x"), topic, on_a)
    y = await joined(clients(b, "y"), topic, on_b)
    viewer = await Viewer.open(a.http_url, f"topic={topic}&kinds=broadcast")
    try:
        assert viewer.status == 200
        await x.send_broadcast("same", {"n": 1})
        await y.send_broadcast("same", {"n": 1})
        assert (await asyncio.wait_for(on_b.get(), DELIVERY))["event"] == "same"
        assert (await asyncio.wait_for(on_a.get(), DELIVERY))["event"] == "same"
        [(_, first)] = await viewer.events_until("same")
        [(_, second)] = await viewer.events_until("same")
        assert sorted([first["nodes"], second["nodes"]]) == sorted([[a_id], [b_id]])
    finally:
        await viewer.close()
