"""Three `realtime-core serve` processes sharing one Redis and one database, as one cluster:
presence across nodes (join, leave, a late joiner's state, a node killed), cluster-wide
max_concurrent_users and peak connections, and GET /admin/v1/nodes (README, "Presence, limits
and usage across nodes").

Each test has a cluster name of its own (REALTIME_CLUSTER), so tests running at the same time
on the same Redis never see each other; its keys are deleted at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets
from conftest import (
    BASE_ENV,
    JWT_SECRET,
    MS,
    ROOT,
    ServerProcess,
    admin_headers,
    make_token,
    scratch_database,
    start_server,
)
from jsclient import JsDriver
from psycopg.conninfo import conninfo_to_dict
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from wire import eventually, metric

pytestmark = [pytest.mark.redis, pytest.mark.pg]

REDIS_URL = "redis://127.0.0.1:6379/0"
TTL_MS = 1_500  # the nodes' liveness TTL: a dead node is reaped within 4/3 of it
SYNC_MS = 200  # users and rates are exchanged this often
FLUSH_MS = 200  # usage flushes
# How long a dead node's presences may take to leave: the stated bound (TTL + TTL/3), plus
# delivery and the load of the test machine.
REAP_BOUND = (TTL_MS * 4 / 3) / 1000 + 2_000 * MS
DELIVERY = 5_000 * MS


def _redis_answers() -> bool:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


Cluster = Callable[..., list[ServerProcess]]


@pytest.fixture
def cluster(pg_dsn: str) -> Iterator[Cluster]:
    """start(n, env) starts n nodes of a fresh cluster on one fresh database; all are stopped,
    and the cluster's Redis keys deleted, at the end."""
    if not _redis_answers():
        pytest.skip("no Redis answers at 127.0.0.1:6379: the cluster tests need one")
    name = f"test-{uuid.uuid4().hex[:10]}"
    started: list[ServerProcess] = []
    with scratch_database(pg_dsn) as url:
        dbname = conninfo_to_dict(url).get("dbname", "postgres")

        def start(n: int = 3, env: dict[str, str] | None = None) -> list[ServerProcess]:
            for _ in range(n):
                node_env = {
                    "REDIS_URL": REDIS_URL,
                    "REALTIME_CLUSTER": name,
                    "REALTIME_CLUSTER_NODE_TTL_MS": str(TTL_MS),
                    "REALTIME_CLUSTER_SYNC_INTERVAL_MS": str(SYNC_MS),
                    "REALTIME_USAGE_FLUSH_INTERVAL_MS": str(FLUSH_MS),
                    # Each node's own replication slots (leadership is another part of the cluster).
                    "SLOT_NAME_SUFFIX": f"{dbname}_{len(started)}",
                    **(env or {}),
                }
                started.append(start_server(url, node_env))
            return started[-n:]

        try:
            yield start
        finally:
            for srv in started:
                srv.stop()
            with redis.Redis.from_url(REDIS_URL) as client:
                leftover = list(client.scan_iter(f"rt:{name}:*"))
                if leftover:
                    client.delete(*leftover)
    for srv in started:
        assert not srv.lost_task_errors(), srv.log()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[ServerProcess], AsyncRealtimeClient]]:
    """realtime-py clients of a given node; all closed at the end."""
    made: list[AsyncRealtimeClient] = []

    def make(node: ServerProcess) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(node.ws_url, make_token(), auto_reconnect=False)
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await client.close()


class PresenceLog:
    """The presence callbacks of one realtime-py channel, recorded."""

    def __init__(self, channel: Any) -> None:
        self.syncs = 0
        self.joins: list[str] = []
        self.leaves: list[str] = []
        channel.on_presence_sync(self._sync)
        channel.on_presence_join(lambda key, cur, new: self.joins.append(key))
        channel.on_presence_leave(lambda key, cur, left: self.leaves.append(key))

    def _sync(self) -> None:
        self.syncs += 1


async def watching(client: AsyncRealtimeClient, topic: str, key: str) -> tuple[Any, PresenceLog]:
    """A channel on `topic` with presence key `key`, subscribed, its first presence_state applied."""
    channel = client.channel(topic, {"config": {"presence": {"key": key, "enabled": True}}})
    log = PresenceLog(channel)
    states: list[RealtimeSubscribeStates] = []
    await channel.subscribe(lambda state, _: states.append(state))
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]
    await eventually(lambda: log.syncs >= 1, DELIVERY, what=f"{key}'s initial presence_state")
    return channel, log


def fields(state: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {key: [{k: v for k, v in m.items() if k != "presence_ref"} for m in metas] for key, metas in state.items()}


async def test_a_join_and_a_leave_reach_every_subscriber_on_every_node_once(cluster, clients, topic):
    nodes = cluster(3)
    watchers = [await watching(clients(node), topic, f"w{i}") for i, node in enumerate(nodes)]
    alice, _ = await watching(clients(nodes[1]), topic, "alice")

    await alice.track({"status": "online"})
    for channel, log in watchers:
        await eventually(lambda log=log: "alice" in log.joins, DELIVERY, what="alice's join everywhere")
        assert fields(channel.presence_state()) == {"alice": [{"status": "online"}]}
    # An update is one leave of the old meta and one join of the new, on every node.
    await alice.track({"status": "away"})
    for channel, log in watchers:
        await eventually(lambda log=log: log.joins.count("alice") == 2, DELIVERY, what="the update everywhere")
        assert fields(channel.presence_state()) == {"alice": [{"status": "away"}]}
    await alice.untrack()
    for channel, log in watchers:
        await eventually(lambda log=log: log.leaves.count("alice") == 2, DELIVERY, what="alice's leave everywhere")
        assert channel.presence_state() == {}
    # The tracker's presence_diff reaches its own node's subscribers once too (nodes[1]'s watcher),
    # and nobody got a join or leave twice.
    for _, log in watchers:
        assert log.joins == ["alice", "alice"] and log.leaves == ["alice", "alice"]


async def test_a_late_joiner_on_any_node_gets_the_whole_clusters_presence_state(cluster, clients, topic):
    nodes = cluster(3)
    alice, _ = await watching(clients(nodes[0]), topic, "alice")
    bob, bob_log = await watching(clients(nodes[1]), topic, "bob")
    await alice.track({"name": "Alice"})
    await bob.track({"name": "Bob"})
    await eventually(lambda: {"alice", "bob"} <= set(bob_log.joins), DELIVERY, what="both tracked")

    for node in nodes:
        carol, _ = await watching(clients(node), topic, "carol")
        state = carol.presence_state()
        assert fields(state) == {"alice": [{"name": "Alice"}], "bob": [{"name": "Bob"}]}
        # The same presence refs everywhere.
        assert state == bob.presence_state()
    # The admin API's view of the stream is the cluster's too, on a node where neither tracks.
    response = httpx.get(
        f"{nodes[2].http_url}/admin/v1/tenants/realtime-dev/channels/{topic}/presence", headers=admin_headers()
    )
    assert response.status_code == 200, response.text
    assert set(response.json()["data"]) == {"alice", "bob"}
    # The cluster's channel list: subscribers summed over the nodes, and by node.
    ids = {node.proc.pid: _node_id(node, nodes[0]) for node in nodes}
    response = httpx.get(f"{nodes[0].http_url}/admin/v1/cluster/tenants/realtime-dev/channels", headers=admin_headers())
    assert response.status_code == 200, response.text
    [row] = response.json()["data"]
    assert (row["topic"], row["subscribers"], row["presence"]) == (topic, 5, 2)
    assert row["by_node"] == {ids[nodes[0].proc.pid]: 2, ids[nodes[1].proc.pid]: 2, ids[nodes[2].proc.pid]: 1}


async def test_a_killed_nodes_presences_leave_everywhere_within_the_bound(cluster, clients, topic):
    nodes = cluster(3)
    watchers = [await watching(clients(node), topic, f"w{i}") for i, node in enumerate(nodes) if i != 1]
    doomed, _ = await watching(clients(nodes[1]), topic, "doomed")
    await doomed.track({"here": True})
    for _, log in watchers:
        await eventually(lambda log=log: "doomed" in log.joins, DELIVERY, what="the join everywhere")

    killed_at = time.monotonic()
    nodes[1].proc.kill()  # SIGKILL: no leave is sent, the node's state stays in Redis
    for channel, log in watchers:
        await eventually(lambda log=log: "doomed" in log.leaves, REAP_BOUND, what="the dead node's leave")
        assert "doomed" not in channel.presence_state()
    assert time.monotonic() - killed_at <= REAP_BOUND
    # A late joiner after the reaping does not see it either.
    late, _ = await watching(clients(nodes[2]), topic, "late")
    assert set(late.presence_state()) <= {"w0", "w2", "late"} and "doomed" not in late.presence_state()
    for _, log in watchers:
        assert log.leaves.count("doomed") == 1


async def _alice_joins_bob(js: JsDriver, bob_node: Any, alice_node: Any, token: str, topic: str) -> dict[str, Any]:
    """realtime-js clients bob and alice join `topic` on their nodes (bob first), and alice tracks
    herself; returns the presence join bob's client saw."""
    for name, node in (("bob", bob_node), ("alice", alice_node)):
        start = js.mark()
        await js.join(name, node.ws_url, token, topic, listen=("presence",), presence={"key": name})
        await js.wait_for(lambda ev, name=name: _presence(ev, name, "sync"), timeout=DELIVERY, since=start)
    start = js.mark()
    assert await js.request({"op": "track", "channel": "alice", "payload": {"status": "online"}}) == "ok"
    return await js.wait_for(lambda ev: _presence(ev, "bob", "join", "alice"), timeout=DELIVERY, since=start)


@pytest.mark.js
async def test_realtime_js_sees_presence_from_another_node(cluster, token, topic):
    nodes = cluster(2)
    async with JsDriver() as js:
        joined = await _alice_joins_bob(js, nodes[1], nodes[0], token, topic)
        assert [{k: v for k, v in m.items() if k != "presence_ref"} for m in joined["payload"]["newPresences"]] == [
            {"status": "online"}
        ]
        assert await js.request({"op": "presenceState", "channel": "bob"}) == await js.request(
            {"op": "presenceState", "channel": "alice"}
        )
        start = js.mark()
        await js.request({"op": "disconnect", "client": "alice"})
        left = await js.wait_for(lambda ev: _presence(ev, "bob", "leave", "alice"), timeout=DELIVERY, since=start)
        assert left["payload"]["leftPresences"] == joined["payload"]["newPresences"]
        assert await js.request({"op": "presenceState", "channel": "bob"}) == {}
        joins = js.matching(lambda ev: _presence(ev, "bob", "join", "alice"), 0)
        assert len(joins) == 1


@pytest.mark.js
async def test_realtime_js_sees_a_killed_nodes_presences_leave(cluster, token, topic):
    nodes = cluster(2)
    async with JsDriver() as js:
        await _alice_joins_bob(js, nodes[0], nodes[1], token, topic)

        start = js.mark()
        killed_at = time.monotonic()
        nodes[1].proc.kill()
        await js.wait_for(lambda ev: _presence(ev, "bob", "leave", "alice"), timeout=REAP_BOUND, since=start)
        assert time.monotonic() - killed_at <= REAP_BOUND
        assert await js.request({"op": "presenceState", "channel": "bob"}) == {}
        assert len(js.matching(lambda ev: _presence(ev, "bob", "leave", "alice"), start)) == 1


def _presence(ev: dict[str, Any], channel: str, event: str, key: str | None = None) -> bool:
    return (
        ev["ev"] == "presence"
        and ev["channel"] == channel
        and ev["payload"]["event"] == event
        and (key is None or ev["payload"].get("key") == key)
    )


# -- limits and usage ------------------------------------------------------------------


async def _refusal(node: ServerProcess, token: str | None = None) -> tuple[int, bytes]:
    """(status, body) of a WebSocket upgrade to `node` (101 and b"" when it opens)."""
    try:
        async with websockets.connect(node.socket_url(token or make_token(), "1.0.0")):
            return 101, b""
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""


async def test_max_concurrent_users_counts_the_users_of_every_node(cluster, clients, topic):
    nodes = cluster(3, {"TENANT_MAX_CONCURRENT_USERS": "2"})
    first = clients(nodes[0])
    await watching(first, topic, "a")
    await watching(clients(nodes[1]), topic, "b")

    # Two users joined on the other nodes: the third node refuses a third within two sync intervals.
    deadline = time.monotonic() + 2 * SYNC_MS / 1000 + 2_000 * MS
    while (status := (await _refusal(nodes[2]))[0]) == 101 and time.monotonic() < deadline:
        await asyncio.sleep(20 * MS)
    assert status == 429
    # One leaves: a user is admitted again on the third node.
    await first.close()
    deadline = time.monotonic() + 2 * SYNC_MS / 1000 + 2_000 * MS
    while (status := (await _refusal(nodes[2]))[0]) == 429 and time.monotonic() < deadline:
        await asyncio.sleep(20 * MS)
    assert status == 101


@pytest.mark.slow
async def test_the_joins_rate_limit_counts_the_joins_of_every_node(cluster, clients, topic):
    # 1 join/s averaged over finished 5 s buckets: 3 joins on each of two nodes are 0.6/s
    # each, under the limit, and 1.2/s for the cluster, over it.
    nodes = cluster(3, {"TENANT_MAX_JOINS_PER_SECOND": "1"})
    for node in nodes[:2]:
        client = clients(node)
        for i in range(3):
            await watching(client, f"{topic}-{i}", "k")
    # The first bucket ends within 5 s; the other nodes' rates are read two sync intervals later.
    deadline = time.monotonic() + 5 + 2 * SYNC_MS / 1000 + 2_000 * MS
    while (answer := await _refusal(nodes[2]))[0] == 101 and time.monotonic() < deadline:
        await asyncio.sleep(50 * MS)
    assert answer[0] == 429 and b"Too many joins per second" in answer[1], answer


def _usage(node: ServerProcess) -> dict[str, Any]:
    response = httpx.get(f"{node.http_url}/admin/v1/tenants/realtime-dev/usage", headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


async def test_peak_connections_is_the_clusters_total(cluster):
    nodes = cluster(2)
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for node in (nodes[0], nodes[0], nodes[1], nodes[1]):
            opened.append(await stack.enter_async_context(websockets.connect(node.socket_url(make_token(), "1.0.0"))))
        # Each node had 2 at most; the cluster had 4.
        await eventually(
            lambda: _usage(nodes[0])["total"]["peak_connections"] == 4, DELIVERY, what="the cluster's peak stored"
        )
        for ws in opened[:3]:
            await ws.close()
        await stack.enter_async_context(websockets.connect(nodes[0].socket_url(make_token(), "1.0.0")))
    # Closed and opened again: 2 at the most since, the peak stays the cluster's 4, on every node
    # (each reads the database, which the other node's flush reaches within its interval).
    for node in nodes:
        await eventually(
            lambda node=node: _usage(node)["total"]["peak_connections"] == 4, DELIVERY, what="the peak on every node"
        )


async def test_usage_totals_are_what_the_clients_did_on_every_node(cluster, clients, topic):
    nodes = cluster(3)
    sent = {0: 3, 1: 5, 2: 7}
    for i, node in enumerate(nodes):
        channel = clients(node).channel(f"{topic}-{i}")
        states: list[RealtimeSubscribeStates] = []
        await channel.subscribe(lambda state, _, states=states: states.append(state))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        for n in range(sent[i]):
            await channel.send_broadcast("e", {"n": n})
    # Every node adds its counts to the database each flush: any node answers the cluster's total.
    for node in nodes:
        await eventually(
            lambda node=node: _usage(node)["total"]["messages"]["broadcast"] == sum(sent.values()),
            DELIVERY,
            what="the broadcasts of every node counted",
        )


async def test_the_clusters_time_series_sum_the_nodes(cluster):
    nodes = cluster(2)
    url = f"{nodes[0].http_url}/admin/v1/cluster/tenants/realtime-dev/timeseries?series=connections&window=1m"

    def last_connections() -> float | None:
        response = httpx.get(url, headers=admin_headers())
        assert response.status_code == 200, response.text
        values = response.json()["series"]["connections"]
        return values[-2] if len(values) > 1 else None  # the last second both nodes have sampled

    async with contextlib.AsyncExitStack() as stack:
        for node in (nodes[0], nodes[1], nodes[1]):
            await stack.enter_async_context(websockets.connect(node.socket_url(make_token(), "1.0.0")))
        await eventually(lambda: last_connections() == 3, DELIVERY, what="3 connections summed over the nodes")
    answer = httpx.get(url, headers=admin_headers()).json()
    assert len(answer["nodes"]) == 2 and len(answer["timestamps"]) == len(answer["series"]["connections"])
    bad = httpx.get(url.replace("connections", "nope"), headers=admin_headers())
    assert bad.status_code == 422 and "series" in bad.json()["errors"]


def _nodes(node: ServerProcess) -> list[dict[str, Any]]:
    response = httpx.get(f"{node.http_url}/admin/v1/nodes", headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_admin_nodes_lists_every_node_and_marks_a_dead_one(cluster, clients, topic):
    nodes = cluster(3)
    await watching(clients(nodes[2]), topic, "x")
    pids = {node.proc.pid for node in nodes}
    await eventually(
        lambda: (
            {(r["pid"], r["alive"], r["connections"]) for r in _nodes(nodes[0])}
            == {(p, True, 1 if p == nodes[2].proc.pid else 0) for p in pids}
        ),
        DELIVERY,
        what="three live nodes, one connection on the third",
    )
    row = next(r for r in _nodes(nodes[1]) if r["pid"] == nodes[2].proc.pid)
    assert row["address"] == f"127.0.0.1:{nodes[2].port}"
    assert row["channels"] == 1 and row["version"] and row["started_at"] <= row["last_seen"]

    # A tenant's connections and errors, asked of every node, say which node each is on.
    ids = {node.proc.pid: _node_id(node, nodes[0]) for node in nodes}
    response = httpx.get(
        f"{nodes[0].http_url}/admin/v1/cluster/tenants/realtime-dev/connections", headers=admin_headers()
    )
    assert response.status_code == 200, response.text
    assert [(c["node"], c["channels"]) for c in response.json()["data"]] == [(ids[nodes[2].proc.pid], 1)]
    status, _ = await _refusal(nodes[1], "not-a-jwt")
    assert status in (401, 403)
    errors = httpx.get(f"{nodes[0].http_url}/admin/v1/cluster/tenants/realtime-dev/errors", headers=admin_headers())
    assert errors.status_code == 200, errors.text
    [incident] = errors.json()["data"]
    assert incident["node"] == ids[nodes[1].proc.pid]
    assert errors.json()["counts"] == {incident["code"]: 1}
    assert errors.json()["by_node"][ids[nodes[1].proc.pid]] == {incident["code"]: 1}

    nodes[2].proc.kill()
    await eventually(
        lambda: [r["alive"] for r in _nodes(nodes[0]) if r["pid"] == nodes[2].proc.pid] == [False],
        REAP_BOUND,
        what="the killed node listed dead",
    )
    response = httpx.get(f"{nodes[0].http_url}/admin/v1/cluster", headers=admin_headers())
    assert response.status_code == 200
    assert response.json()["nodes"] == 2
    # The survivors' metrics: two live nodes, the dead one reaped by one of them.
    await eventually(
        lambda: (
            [_metric(node, "realtime_cluster_nodes") for node in nodes[:2]] == [2, 2]
            and sum(_metric(node, "realtime_cluster_nodes_reaped_total") for node in nodes[:2]) == 1
        ),
        DELIVERY,
        what="two live nodes and one reaped, on the survivors' metrics",
    )


def _metric(node: ServerProcess, name: str) -> float:
    return metric(node.http_url, name)


# -- faults ----------------------------------------------------------------------------


def _node_id(node: ServerProcess, via: ServerProcess) -> str:
    return next(r["id"] for r in _nodes(via) if r["pid"] == node.proc.pid)


async def test_a_node_whose_redis_connections_drop_resynchronises_its_presences(cluster, clients, topic):
    nodes = cluster(2)
    _, watcher = await watching(clients(nodes[1]), topic, "watcher")
    bob, _ = await watching(clients(nodes[1]), topic, "bob")
    await bob.track({"on": 1})
    alice, alice_log = await watching(clients(nodes[0]), topic, "alice")
    await eventually(lambda: "bob" in alice_log.joins, DELIVERY, what="bob's join on the other node")

    name = f"rt:{nodes[1].env['REALTIME_CLUSTER']}:{_node_id(nodes[1], nodes[0])}"
    with redis.Redis.from_url(REDIS_URL) as client:
        ids = [c["id"] for c in client.client_list() if c.get("name") == name]
        assert ids
        for conn_id in ids:
            client.execute_command("CLIENT", "KILL", "ID", conn_id)
    await alice.track({"on": 2})  # published while the other node may not be subscribed

    await eventually(lambda: "alice" in watcher.joins, DELIVERY, what="alice's join on the cut node")
    await eventually(
        lambda: any("cluster presence: resynchronised" in line for line in nodes[1].output),
        DELIVERY,
        what="the cut node resynchronised",
    )
    assert watcher.joins.count("alice") == 1 and alice_log.joins.count("bob") == 1
    assert "bob" in alice.presence_state() and "alice" in bob.presence_state()


async def test_a_node_that_stalled_past_its_ttl_is_reaped_then_restores_itself(cluster, clients, topic):
    nodes = cluster(2)
    _, watcher = await watching(clients(nodes[0]), topic, "watcher")
    sleeper, _ = await watching(clients(nodes[1]), topic, "sleeper")
    await sleeper.track({"zz": False})
    await eventually(lambda: "sleeper" in watcher.joins, DELIVERY, what="the join")

    nodes[1].proc.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: "sleeper" in watcher.leaves, REAP_BOUND, what="the stalled node reaped")
        response = httpx.get(f"{nodes[0].http_url}/admin/v1/cluster", headers=admin_headers())
        assert response.json()["tenants"].get("realtime-dev", {}).get("connections", 0) == 1
    finally:
        nodes[1].proc.send_signal(signal.SIGCONT)
    # Awake again: its beat finds its key gone and puts its presences and connections back.
    await eventually(lambda: watcher.joins.count("sleeper") == 2, DELIVERY, what="the restored presence")
    await eventually(
        lambda: (
            httpx.get(f"{nodes[0].http_url}/admin/v1/cluster", headers=admin_headers()).json()["tenants"][
                "realtime-dev"
            ]["connections"]
            == 2
        ),
        DELIVERY,
        what="its connection counted again",
    )


def test_a_node_whose_redis_does_not_answer_refuses_to_start_with_a_clear_message(pg_dsn):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with scratch_database(pg_dsn) as url:
        env = {
            **os.environ,
            **BASE_ENV,
            "DATABASE_URL": url,
            "REALTIME_JWT_SECRET": JWT_SECRET,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        }
        result = subprocess.run(
            [sys.executable, "-m", "realtime_core", "serve", "--port", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60_000 * MS,
        )
    assert result.returncode == 1
    # The first to meet Redis says so (the topic broker, with the URL's password hidden).
    assert f"realtime-core: REDIS_URL redis://127.0.0.1:{port}/0 does not answer" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def test_after_redis_loses_everything_the_nodes_put_their_state_back(cluster, clients, topic):
    # As a Redis restarted without persistence: every key of the cluster gone, every connection cut.
    first, second = cluster(2)
    alice, _ = await watching(clients(first), topic, "alice")
    bob, bob_log = await watching(clients(second), topic, "bob")
    await alice.track({"n": 1})
    await bob.track({"n": 2})
    await eventually(lambda: "alice" in bob_log.joins, DELIVERY, what="alice seen on the second node")
    name = first.env["REALTIME_CLUSTER"]
    with redis.Redis.from_url(REDIS_URL) as client:
        client.delete(*client.scan_iter(f"rt:{name}:*"))
        for conn in client.client_list():
            if conn.get("name", "").startswith(f"rt:{name}:"):
                client.execute_command("CLIENT", "KILL", "ID", conn["id"])

    # Within a liveness beat (TTL/3) both nodes are registered again, with their connections...
    def cluster_view() -> dict[str, Any]:
        response = httpx.get(f"{first.http_url}/admin/v1/cluster", headers=admin_headers())
        assert response.status_code == 200, response.text
        return response.json()

    await eventually(
        lambda: cluster_view()["nodes"] == 2 and cluster_view()["tenants"]["realtime-dev"]["connections"] == 2,
        DELIVERY,
        what="both nodes and their connections back in Redis",
    )
    # ...and their presences: a node started now reads both from Redis.
    (third,) = cluster(1)
    carol, _ = await watching(clients(third), topic, "carol")
    assert fields(carol.presence_state()) == {"alice": [{"n": 1}], "bob": [{"n": 2}]}
    # The nodes that stayed up delivered no leave and no second join.
    assert bob_log.leaves == [] and bob_log.joins.count("alice") == 1


async def test_a_node_gone_with_its_record_lost_still_has_its_presences_leave(cluster, clients, topic):
    # Nobody can reap a node whose record Redis lost: the others drop its presences after 2 TTLs.
    first, second = cluster(2)
    _, watcher = await watching(clients(first), topic, "watcher")
    ghost, _ = await watching(clients(second), topic, "ghost")
    await ghost.track({"boo": True})
    await eventually(lambda: "ghost" in watcher.joins, DELIVERY, what="the join")
    ghost_id = _node_id(second, first)
    second.proc.kill()
    with redis.Redis.from_url(REDIS_URL) as client:
        client.hdel(f"rt:{first.env['REALTIME_CLUSTER']}:nodes", ghost_id)
    await eventually(lambda: "ghost" in watcher.leaves, 2 * TTL_MS / 1000 + REAP_BOUND, what="the ghost's leave")
    assert watcher.leaves == ["ghost"]
