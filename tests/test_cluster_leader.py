"""Replication leadership across three `realtime-core serve` processes on one Redis (cluster/leader.py).

One process, elected by an advisory lock, streams the tenant's slot and publishes each change
to the processes whose subscriptions may see it; clients connected to the other processes get
every committed row once, in commit order, even when the leader is killed mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis
from conftest import MS, ServerProcess, admin_headers, make_token
from jsclient import JsDriver
from prometheus_client.parser import text_string_to_metric_families
from realtime import AsyncRealtimeClient
from test_postgres_changes import new_table, run
from wire import V1, RawClient

from realtime_core.cluster.leader import lock_key
from realtime_core.postgres_changes.peers import decode_batch, encode_batch

pytestmark = [pytest.mark.redis, pytest.mark.pg]

REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "realtime-dev"
ROWS = 150  # per table


def test_a_published_batch_reads_back_as_sent():
    changes = [
        (100, "INSERT", [(b'{"a":1}', ["s1", "s2"]), (b'{"b":"\\n"}', ["s3"])]),
        (100, "UPDATE", [(b"{}", ["s1"])]),
        (205, "DELETE", [(b'{"c":[1,2]}', ["s2"])]),
    ]
    assert decode_batch(encode_batch("tenant-x", changes)) == ("tenant-x", changes)


def test_the_lock_key_is_a_signed_64_bit_digest_of_the_slot_names():
    key = lock_key(("slot_a", "messages_a"))
    assert -(2**63) <= key < 2**63
    assert key == lock_key(("slot_a", "messages_a"))
    assert key != lock_key(("slot_b", "messages_a"))
    assert key != lock_key(("slot_amessages_a", ""))  # names are separated, not concatenated


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        pytest.skip(f"these tests need Redis at 127.0.0.1:6379, which does not answer ({exc})")
    yield client
    client.close()


@pytest.fixture
def cluster(fresh_database, server_factory, redis_client) -> Iterator[tuple[str, Callable[[], ServerProcess]]]:
    """(cluster name, a starter of serve processes in it, all on one database); its keys go after."""
    name = f"test-{secrets.token_hex(4)}"

    def start() -> ServerProcess:
        return server_factory({"REDIS_URL": REDIS_URL, "REALTIME_CLUSTER": name}, database_url=fresh_database)

    yield name, start
    keys = list(redis_client.scan_iter(f"rt:{name}:*"))
    if keys:
        redis_client.delete(*keys)


async def leader_of(servers: list[ServerProcess]) -> ServerProcess:
    """The running server that says it leads the tenant's replication (waited for)."""
    deadline = asyncio.get_running_loop().time() + 20_000 * MS
    async with httpx.AsyncClient() as http:
        while True:
            for server in servers:
                if server.proc.poll() is None and (await replication_view(http, server))["leading"]:
                    return server
            assert asyncio.get_running_loop().time() < deadline, "no process took the leadership"
            await asyncio.sleep(0.05)


async def replication_view(http: httpx.AsyncClient, server: ServerProcess) -> dict[str, Any]:
    response = await http.get(
        f"{server.http_url}/admin/v1/tenants/{TENANT}/replication", headers=admin_headers(admin="read")
    )
    assert response.status_code == 200, response.text
    return response.json()


class Inserter(threading.Thread):
    """Single-row transactions into two tables, alternating, ids 1..ROWS each; then a sentinel
    row (id 0) in each, committed after every other row."""

    def __init__(self, dsn: str, tables: list[str]) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.tables = tables
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for i in range(1, ROWS + 1):
                    for table in self.tables:
                        run(conn, "insert into {t} values (%s, 'row')", table, i)
                    threading.Event().wait(0.004)  # a steady stream, so the kill lands mid-stream
                for table in self.tables:
                    run(conn, "insert into {t} values (0, 'sentinel')", table)
        except BaseException as exc:
            self.error = exc


def ids_by_table(events: list[tuple[str, int]], tables: list[str]) -> dict[str, list[int]]:
    return {table: [row for t, row in events if t == table] for table in tables}


@pytest.mark.js
async def test_killing_the_leader_mid_stream_loses_and_duplicates_no_row(cluster, fresh_database):
    _, start = cluster
    servers = [start(), start(), start()]
    leader = await leader_of(servers)
    followers = [s for s in servers if s is not leader]
    with psycopg.connect(fresh_database, autocommit=True) as db:
        tables = [new_table(db, "id int primary key, title text") for _ in range(2)]

    # The Python client on one follower, realtime-js on the other.
    py_events: list[tuple[str, int]] = []
    py_client = AsyncRealtimeClient(followers[0].ws_url, make_token())
    await py_client.connect()
    subscribed = asyncio.Event()
    channel = py_client.channel(f"room-{secrets.token_hex(3)}")
    for table in tables:
        channel.on_postgres_changes(
            "INSERT",
            schema="public",
            table=table,
            callback=lambda e: py_events.append((e["data"]["table"], e["data"]["record"]["id"])),
        )
    channel.on_system(lambda payload: subscribed.set())
    await channel.subscribe()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(py_client.close)
        await asyncio.wait_for(subscribed.wait(), 15_000 * MS)
        js = await stack.enter_async_context(JsDriver())
        await js.client("c", followers[1].ws_url, make_token())
        await js.channel("c", "c", f"room-{secrets.token_hex(3)}")
        for table in tables:
            await js.on("c", "postgres_changes", event="INSERT", schema="public", table=table)
        await js.on("c", "system")
        await js.subscribed("c")
        system = await js.wait_for(lambda ev: ev["ev"] == "system", timeout=15_000 * MS)
        assert system["payload"]["message"] == "Subscribed to PostgreSQL", system

        def js_events() -> list[tuple[str, int]]:
            return [(ev["payload"]["table"], ev["payload"]["new"]["id"]) for ev in js.matching(is_pg_change)]

        inserter = Inserter(fresh_database, tables)
        inserter.start()
        loop = asyncio.get_running_loop()

        async def until(condition: Callable[[], bool], what: str, timeout: float) -> None:
            deadline = loop.time() + timeout
            while not condition():
                assert loop.time() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.01)

        # Kill once rows flow through the leader to both followers' clients.
        await until(lambda: len(py_events) >= 20 and len(js_events()) >= 20, "the first rows", 20_000 * MS)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        assert len(py_events) < 2 * ROWS, "the kill came after the stream ended: make ROWS larger"

        successor = await leader_of(followers)
        assert successor in followers

        def complete(events: list[tuple[str, int]]) -> bool:
            return sum(1 for _, row in events if row == 0) == len(tables)

        await until(lambda: complete(py_events), "the Python client's sentinels", 60_000 * MS)
        await until(lambda: complete(js_events()), "realtime-js's sentinels", 60_000 * MS)
        inserter.join()
        assert inserter.error is None

    # Every committed row exactly once, in commit order per table; the sentinels came
    # last, so a duplicate re-read by the new leader would have come before them.
    expected = {table: [*range(1, ROWS + 1), 0] for table in tables}
    assert ids_by_table(py_events, tables) == expected
    assert ids_by_table(js_events(), tables) == expected


def is_pg_change(ev: dict[str, Any]) -> bool:
    return ev["ev"] == "postgres_changes"


async def until_true(condition: Callable[[], Any], what: str, timeout: float = 20_000 * MS) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_one_process_leads_and_every_process_says_which(cluster):
    _, start = cluster
    servers = [start(), start(), start()]
    leader = await leader_of(servers)
    async with httpx.AsyncClient() as http:

        async def views() -> list[dict[str, Any]]:
            return [await replication_view(http, server) for server in servers]

        def streaming(view: dict[str, Any]) -> set[str]:
            return {slot["kind"] for slot in view["slots"] if slot["streaming"]}

        async def agreed() -> bool:
            found = await views()
            return (
                len({view["leader"] for view in found}) == 1
                and found[0]["leader"] is not None
                and any(streaming(view) == {"postgres_changes", "db_broadcast"} for view in found)
            )

        await until_true(agreed, "every process to name the same leader, and the leader to stream")
        found = await views()
        assert [view["leading"] for view in found] == [server is leader for server in servers]
        # Both slots are streamed by the leader alone.
        assert [streaming(view) for view in found] == [
            {"postgres_changes", "db_broadcast"} if server is leader else set() for server in servers
        ]
        gauges = []
        for server in servers:
            text = (await http.get(f"{server.http_url}/metrics")).text
            [family] = [f for f in text_string_to_metric_families(text) if f.name == "realtime_replication_leader"]
            gauges.append({s.labels["tenant"]: s.value for s in family.samples})
        assert gauges == [{TENANT: 1.0 if server is leader else 0.0} for server in servers]


@pytest.mark.js
async def test_the_leader_forgets_the_subscriptions_of_a_process_that_died(cluster, redis_client, fresh_database):
    name, start = cluster
    servers = [start(), start(), start()]
    leader = await leader_of(servers)
    with psycopg.connect(fresh_database, autocommit=True) as db:
        table = new_table(db, "id int primary key")
    doomed = next(s for s in servers if s is not leader)
    subscriptions = f"rt:{name}:pgsubs:{TENANT}"
    async with JsDriver() as js:
        await js.client("c", doomed.ws_url, make_token())
        await js.channel("c", "c", f"room-{secrets.token_hex(3)}")
        await js.on("c", "postgres_changes", event="*", schema="public", table=table)
        await js.on("c", "system")
        await js.subscribed("c")
        system = await js.wait_for(lambda ev: ev["ev"] == "system", timeout=15_000 * MS)
        assert system["payload"]["message"] == "Subscribed to PostgreSQL", system
        async with httpx.AsyncClient() as http:
            leader_id = (await replication_view(http, leader))["leader"]
        [record] = [orjson.loads(v) for v in redis_client.hvals(subscriptions)]
        assert record["node"] != leader_id  # the follower's, shared with the leader
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()

        with psycopg.connect(fresh_database, autocommit=True) as db:
            [(rows_before,)] = db.execute("select count(*) from realtime.subscription").fetchall()
            assert rows_before == 1

            async def forgotten() -> bool:
                [(rows,)] = db.execute("select count(*) from realtime.subscription").fetchall()
                return redis_client.hlen(subscriptions) == 0 and rows == 0

            await until_true(forgotten, "the dead process's subscription and its row to go", 30_000 * MS)


@pytest.mark.js
async def test_clients_on_the_leader_and_on_a_follower_each_get_every_change_once(cluster, fresh_database):
    _, start = cluster
    servers = [start(), start()]
    leader = await leader_of(servers)
    follower = next(s for s in servers if s is not leader)
    with psycopg.connect(fresh_database, autocommit=True) as db:
        table = new_table(db, "id int primary key, title text")
        async with JsDriver() as js:
            for name, server in (("on_leader", leader), ("on_follower", follower)):
                await js.client(name, server.ws_url, make_token())
                await js.channel(name, name, f"room-{secrets.token_hex(3)}")
                await js.on(name, "postgres_changes", event="*", schema="public", table=table)
                await js.on(name, "system")
                await js.subscribed(name)
                system = await js.wait_for(
                    lambda ev, name=name: ev["ev"] == "system" and ev["channel"] == name, timeout=15_000 * MS
                )
                assert system["payload"]["message"] == "Subscribed to PostgreSQL", system
            for row_id in (1, 2, 3, 0):
                run(db, "insert into {t} values (%s, 'x')", table, row_id)
            for name in ("on_leader", "on_follower"):
                await js.wait_for(
                    lambda ev, name=name: (
                        is_pg_change(ev) and ev["channel"] == name and ev["payload"]["new"]["id"] == 0
                    ),
                    timeout=10_000 * MS,
                )
            received = {
                name: [ev["payload"]["new"]["id"] for ev in js.matching(is_pg_change) if ev["channel"] == name]
                for name in ("on_leader", "on_follower")
            }
    assert received == {"on_leader": [1, 2, 3, 0], "on_follower": [1, 2, 3, 0]}


@pytest.mark.js
async def test_subscriptions_made_while_no_process_leads_get_the_changes_after_they_are_live(cluster, fresh_database):
    _, start = cluster
    servers = [start(), start(), start()]
    leader = await leader_of(servers)
    followers = [s for s in servers if s is not leader]
    with psycopg.connect(fresh_database, autocommit=True) as db:
        table = new_table(db, "id int primary key")
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        async with JsDriver() as js:
            # Joined during the election on both followers, so one of them is not the next
            # leader: that one's subscription must reach the next leader when it takes over.
            names = ["a", "b"]
            for name, server in zip(names, followers, strict=True):
                await js.client(name, server.ws_url, make_token())
                await js.channel(name, name, f"room-{secrets.token_hex(3)}")
                await js.on(name, "postgres_changes", event="INSERT", schema="public", table=table)
                await js.on(name, "system")
                await js.subscribed(name)
            for name in names:
                system = await js.wait_for(
                    lambda ev, name=name: ev["ev"] == "system" and ev["channel"] == name, timeout=15_000 * MS
                )
                assert system["payload"]["message"] == "Subscribed to PostgreSQL", system
            run(db, "insert into {t} values (1)", table)
            for name in names:
                event = await js.wait_for(
                    lambda ev, name=name: is_pg_change(ev) and ev["channel"] == name, timeout=10_000 * MS
                )
                assert event["payload"]["new"] == {"id": 1}
    assert await leader_of(followers) in followers


async def test_a_database_broadcast_reaches_clients_on_every_process(cluster, fresh_database):
    """realtime.send is streamed by the leader alone and crosses to the followers' clients through
    the Redis broker, once each, in order."""
    _, start = cluster
    servers = [start(), start(), start()]
    leader = await leader_of(servers)
    topic = f"db-{secrets.token_hex(4)}"
    clients = []
    try:
        for server in servers:
            client = await RawClient.open(server.socket_url(make_token(), V1), V1)
            await client.join(f"realtime:{topic}")
            clients.append(client)
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            for n in range(3):
                payload = orjson.dumps({"n": n}).decode()
                conn.execute("select realtime.send(%s::jsonb, 'db', %s, false)", (payload, topic))
        for server, client in zip(servers, clients, strict=True):
            got = [await client.expect_event(f"realtime:{topic}", "broadcast", 10_000 * MS) for _ in range(3)]
            assert [frame.payload["payload"]["n"] for frame in got] == [0, 1, 2], server is leader
        for client in clients:
            await client.nothing_pending()
    finally:
        for client in clients:
            await client.close()
