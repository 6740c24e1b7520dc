"""Delivery traces (`/admin/v1/tenants/{id}/traces`) against `realtime-core serve` and the official
clients: each decision the server takes for the traced subject on the traced topic, with its reason.

The REST broadcast endpoint publishes before it answers, so a trace read after a 202 holds its
decisions; decisions for a client's own sends (refused writes) are waited for on the trace itself."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from conftest import ADMIN_SECRET, BUCKET_WAIT, CDC_ENV, MS, admin_headers, make_token, messages_policy, serving
from fakes import TENANT
from jsclient import JsDriver
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_postgres_changes import new_table, next_change, rls_table, run, subscribe
from test_real_socket import drain_until_closed, silent_subscriber
from wire import V2, RawClient, eventually

from bench._servers import OurServer

pytestmark = pytest.mark.pg

TRACES = f"/admin/v1/tenants/{TENANT}/traces"
Decision = dict[str, Any]


async def admin(server, method: str, path: str, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=server.http_url, headers=admin_headers() if headers is None else headers
    ) as http:
        return await http.request(method, path, **kwargs)


_started: list[tuple[Any, str]] = []  # (server, trace id): stopped after each test


@pytest.fixture(autouse=True)
async def _stop_traces() -> AsyncIterator[None]:
    """Servers are shared between tests, and a tenant runs at most 10 traces: each test stops its own."""
    yield
    while _started:
        server, trace = _started.pop()
        if server.proc.poll() is None:
            await admin(server, "DELETE", f"{TRACES}/{trace}")


async def start_trace(server, topic: str, seconds: int = 60, **subject: str) -> str:
    response = await admin(server, "POST", TRACES, json={"topic": topic, "seconds": seconds, **subject})
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"{TRACES}/{body['id']}"
    _started.append((server, body["id"]))
    return body["id"]


async def read_trace(server, trace: str) -> dict[str, Any]:
    response = await admin(server, "GET", f"{TRACES}/{trace}")
    assert response.status_code == 200, response.text
    return response.json()


async def decision(server, trace: str, match: Callable[[Decision], bool], timeout: float = 5_000 * MS) -> Decision:
    """The first decision of `trace` that `match`es, waiting for it to be recorded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        decisions = (await read_trace(server, trace))["decisions"]
        found = [d for d in decisions if match(d)]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, f"no matching decision in {decisions}"
        await asyncio.sleep(0.02)


async def rest_broadcast(server, topic: str, event: str, private: bool = False, n: int = 1) -> None:
    messages = [{"topic": topic, "event": event, "payload": {"i": i}, "private": private} for i in range(n)]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post(
            "/api/broadcast", json={"messages": messages}, headers={"Authorization": f"Bearer {make_token()}"}
        )
    assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def limited(pg_dsn: str):
    """A server whose tenant takes 1 KB payloads, 2 kB Postgres Changes records and a high message rate."""
    env = {
        **CDC_ENV,
        "TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1",
        "REALTIME_MAX_RECORD_BYTES": "2000",
        "TENANT_MAX_EVENTS_PER_SECOND": "100000",
    }
    with serving(pg_dsn, env) as srv:
        yield srv


@pytest.fixture
async def clients(server) -> AsyncIterator[Callable[..., AsyncRealtimeClient]]:
    made: list[AsyncRealtimeClient] = []

    def make(token: str, srv=None) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient((srv or server).ws_url, token, auto_reconnect=False)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def joined(client: AsyncRealtimeClient, topic: str, *, self_: bool = False, private: bool = False, setup=None):
    channel = client.channel(topic, {"config": {"broadcast": {"ack": False, "self": self_}, "private": private}})
    if setup is not None:
        setup(channel)
    states: list[RealtimeSubscribeStates] = []
    await channel.subscribe(lambda state, error: states.append(state))
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]
    return channel


# -- broadcast ----------------------------------------------------------------------


async def test_a_self_false_broadcast_is_explained_for_the_sender_and_delivered_to_the_other(server, clients, topic):
    alice_trace = await start_trace(server, topic, sub="alice")
    bob_trace = await start_trace(server, topic, sub="bob")
    got: asyncio.Queue[Any] = asyncio.Queue()
    sender = await joined(clients(make_token("authenticated", sub="alice")), topic)
    await joined(
        clients(make_token("authenticated", sub="bob")), topic, setup=lambda ch: ch.on_broadcast("*", got.put_nowait)
    )

    await sender.send_broadcast("hello", {"n": 1})
    assert (await asyncio.wait_for(got.get(), 5_000 * MS))["event"] == "hello"

    alice = await read_trace(server, alice_trace)
    assert alice["topic"] == topic and alice["sub"] == "alice" and alice["active"]
    [mine] = alice["decisions"]
    assert (mine["kind"], mine["event"], mine["delivered"], mine["reason"]) == ("broadcast", "hello", False, "self")
    [theirs] = (await read_trace(server, bob_trace))["decisions"]
    assert (theirs["kind"], theirs["event"], theirs["delivered"], theirs["reason"]) == (
        "broadcast",
        "hello",
        True,
        None,
    )
    assert theirs["connection"] != mine["connection"]

    # The connection ids a trace reports trace one connection.
    by_connection = await start_trace(server, topic, connection=theirs["connection"])
    await sender.send_broadcast("again", {"n": 2})
    assert (await asyncio.wait_for(got.get(), 5_000 * MS))["event"] == "again"
    [again] = (await read_trace(server, by_connection))["decisions"]
    assert (again["event"], again["connection"], again["delivered"]) == ("again", theirs["connection"], True)


async def test_presence_state_and_diffs_are_traced(server, clients, topic):
    trace = await start_trace(server, topic, sub="ivy")
    params = {"config": {"broadcast": {"ack": False, "self": False}, "presence": {"key": "", "enabled": True}}}
    watcher = clients(make_token("authenticated", sub="ivy")).channel(topic, params)
    await watcher.subscribe()
    await decision(server, trace, lambda d: d["event"] == "presence_state")
    tracker = await joined(clients(make_token("authenticated", sub="jay")), topic)
    await tracker.track({"online": True})
    diff = await decision(server, trace, lambda d: d["event"] == "presence_diff")
    assert (diff["kind"], diff["delivered"], diff["reason"]) == ("presence", True, None)


async def test_not_joined_and_the_other_stream_are_explained(server, clients, topic):
    await joined(clients(make_token("authenticated", sub="carol")), topic)
    on_topic = await start_trace(server, topic, sub="carol")
    elsewhere = await start_trace(server, topic + "-other", sub="carol")

    with psycopg.connect(server.database_url, autocommit=True) as db:  # carol joined the public stream
        db.execute("select realtime.send('{}'::jsonb, 'private-one', %s, true)", (topic,))
    await decision(server, on_topic, lambda d: d["event"] == "private-one")
    await rest_broadcast(server, topic + "-other", "nobody-there")
    await rest_broadcast(server, topic, "public-one")

    decisions = (await read_trace(server, on_topic))["decisions"]
    assert [(d["kind"], d["event"], d["delivered"], d["reason"]) for d in decisions] == [
        ("db_broadcast", "private-one", False, "stream"),
        ("rest", "public-one", True, None),
    ]
    assert decisions[0]["connection"] == decisions[1]["connection"] is not None
    [absent] = (await read_trace(server, elsewhere))["decisions"]
    assert (absent["event"], absent["delivered"], absent["reason"], absent["connection"]) == (
        "nobody-there",
        False,
        "not_joined",
        None,
    )


@pytest.mark.js
async def test_a_broadcast_the_write_policy_refuses_is_explained_for_its_realtime_js_sender(server, topic):
    prefix = f"tr{secrets.token_hex(3)}"
    private_topic = f"{prefix}:room"
    sub = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'"
    with psycopg.connect(server.database_url, autocommit=True) as db:
        messages_policy(db, "select", f"realtime.topic() = '{private_topic}'")
        messages_policy(db, "insert", f"realtime.topic() = '{private_topic}' and {sub} <> 'mallory'")
    trace = await start_trace(server, private_topic, sub="mallory")
    async with JsDriver() as js:
        await js.client("m", server.ws_url, make_token("authenticated", sub="mallory"))
        await js.channel("m", "m", private_topic, private=True)
        assert (await js.subscribe("m"))["status"] == "SUBSCRIBED"
        message = {"type": "broadcast", "event": "forbidden", "payload": {}}
        assert await js.request({"op": "send", "channel": "m", "message": message}) == "ok"
        refused = await decision(server, trace, lambda d: d["event"] == "forbidden")
    assert (refused["kind"], refused["delivered"], refused["reason"]) == ("broadcast", False, "write_denied")


# -- Postgres Changes ---------------------------------------------------------------


async def test_a_filtered_change_and_an_rls_hidden_change_are_explained(cdc, db, topic):
    filtered = new_table(db, "id int primary key, body text")
    hidden = rls_table(db)
    trace = await start_trace(cdc, topic, sub="dave")
    received: asyncio.Queue[Any] = asyncio.Queue()
    client = AsyncRealtimeClient(cdc.ws_url, make_token("authenticated", sub="dave"), auto_reconnect=False)
    await client.connect()
    try:
        subscribed = asyncio.Event()
        channel = client.channel(topic)
        channel.on_postgres_changes(
            "INSERT", schema="public", table=filtered, filter="id=eq.1", callback=received.put_nowait
        )
        channel.on_postgres_changes("INSERT", schema="public", table=hidden, callback=received.put_nowait)
        channel.on_system(lambda payload: subscribed.set())
        await channel.subscribe()
        await asyncio.wait_for(subscribed.wait(), 10_000 * MS)

        run(db, "insert into {t} values (2, 'filtered out')", filtered)
        run(db, "insert into {t} values (7, 'erin', 'not for dave')", hidden)
        run(db, "insert into {t} values (1, 'wanted')", filtered)
        got = await asyncio.wait_for(received.get(), 10_000 * MS)
        assert got["data"]["record"] == {"id": 1, "body": "wanted"}
    finally:
        await client.close()

    decisions = [d for d in (await read_trace(cdc, trace))["decisions"] if d["kind"] == "postgres_changes"]
    assert [(d["event"], d["delivered"], d["reason"]) for d in decisions] == [
        ("INSERT", False, "pg_filter"),
        ("INSERT", False, "rls"),
        ("INSERT", True, None),
    ]


async def test_a_raising_policy_and_a_missing_privilege_are_explained(cdc, db, topic):
    raising = rls_table(db, "create policy boom on {t} for select to authenticated using (1 / (id - id) = 1)")
    locked = new_table(db, "id int primary key, body text")
    db.execute(f'revoke select on "{locked}" from authenticated')
    db.execute(f'grant select (body) on "{locked}" to authenticated')  # not the key: Error 401
    trace = await start_trace(cdc, topic, sub="frank")
    token = make_token("authenticated", sub="frank")
    async with await RawClient.open(cdc.socket_url(token, V2)) as raw:
        spec = [{"event": "INSERT", "schema": "public", "table": t} for t in (raising, locked)]
        await subscribe(raw, topic, spec, token=token)
        run(db, "insert into {t} values (1, 'not frank', 'x')", raising)  # the own policy is false
        run(db, "insert into {t} values (1, 'locked')", locked)
        data = (await next_change(raw))["data"]
        assert data["errors"] == ["Error 401: Unauthorized"]
    decisions = (await read_trace(cdc, trace))["decisions"]
    assert [(d["delivered"], d["reason"]) for d in decisions] == [(False, "rls_error"), (True, "privilege")]


async def test_a_change_delivered_with_error_413_is_explained(limited, topic):
    with psycopg.connect(limited.database_url, autocommit=True) as db:
        table = new_table(db, "id int primary key, big text")
        trace = await start_trace(limited, topic, sub="kim")
        token = make_token("authenticated", sub="kim")
        async with await RawClient.open(limited.socket_url(token, V2)) as raw:
            await subscribe(raw, topic, [{"event": "INSERT", "schema": "public", "table": table}], token=token)
            run(db, "insert into {t} values (1, %s)", table, "x" * 5000)
            assert (await next_change(raw))["data"]["errors"] == ["Error 413: Payload Too Large"]
    [big] = (await read_trace(limited, trace))["decisions"]
    assert (big["kind"], big["event"], big["delivered"], big["reason"]) == (
        "postgres_changes",
        "INSERT",
        True,
        "payload_too_large",
    )


# -- slow consumers ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_slow_consumer_drop_is_explained(server_factory, topic):
    srv = server_factory({"REALTIME_MAX_WRITE_BUFFER_BYTES": str(256 * 1024)})
    trace = await start_trace(srv, topic, sub="slowpoke")
    count, size = 640, 16 * 1024
    slow = silent_subscriber(srv.port, topic, make_token(sub="slowpoke"), rcvbuf=4096)
    try:
        async with await RawClient.open(srv.socket_url(make_token(), V2), V2) as sender:
            join_ref = (await sender.join(f"realtime:{topic}", {"broadcast": {"ack": True}})).join_ref
            for seq in range(count):
                message = {"type": "broadcast", "event": "chunk", "payload": {"seq": seq, "blob": "x" * size}}
                ref = await sender.push(f"realtime:{topic}", "broadcast", message, join_ref=join_ref)
                await sender.reply_to(ref, f"realtime:{topic}")
            closed, _ = await asyncio.to_thread(drain_until_closed, slow, 5_000 * MS)
            assert closed
    finally:
        slow.close()
    decisions = (await read_trace(srv, trace))["decisions"]
    dropped = [d for d in decisions if d["reason"] == "slow_consumer"]
    assert dropped and all(not d["delivered"] and d["event"] == "chunk" for d in dropped)
    first_drop = decisions.index(dropped[0])
    assert first_drop > 0 and all(d["delivered"] for d in decisions[:first_drop])
    # After the drop the subject has no channel on the topic any more.
    assert all(d["reason"] in ("slow_consumer", "not_joined") for d in decisions[first_drop:])


@pytest.mark.slow
async def test_a_receiver_shut_down_for_the_tenants_message_rate_is_explained(server_factory, clients, topic):
    """Rate counters average 5 s buckets (docs/protocol.md §9.2), so this waits one bucket."""
    srv = server_factory({"TENANT_MAX_EVENTS_PER_SECOND": "10"})
    trace = await start_trace(srv, topic, sub="hank")
    channel = await joined(clients(make_token("authenticated", sub="hank"), srv), topic)
    for _ in range(6):  # 60 messages (and their 60 deliveries) in the first bucket
        await rest_broadcast(srv, topic, "filler", n=10)
    await asyncio.sleep(BUCKET_WAIT)
    with psycopg.connect(srv.database_url, autocommit=True) as db:
        db.execute("select realtime.send('{}'::jsonb, 'one-too-many', %s, false)", (topic,))
    limited = await decision(srv, trace, lambda d: d["event"] == "one-too-many")
    assert (limited["kind"], limited["delivered"], limited["reason"]) == ("db_broadcast", False, "rate_limited")
    await eventually(lambda: not channel.is_joined, 5_000 * MS, "the receiver's channel closed")


# -- bounds, expiry, refusals --------------------------------------------------------


async def test_decisions_are_capped_and_the_overflow_counted_under_a_flood(limited, topic):
    srv = limited
    trace = await start_trace(srv, topic, sub="nobody")
    for _ in range(3):
        await rest_broadcast(srv, topic, "flood", n=500)
    body = await read_trace(srv, trace)
    assert body["decision_count"] == len(body["decisions"]) == 1000
    assert body["overflow"] == 500
    assert {d["reason"] for d in body["decisions"]} == {"not_joined"}


async def test_a_tenant_runs_a_bounded_number_of_traces_and_one_may_be_stopped(limited, topic):
    srv = limited
    traces = [await start_trace(srv, f"{topic}-{i}", sub="x") for i in range(10)]
    response = await admin(srv, "POST", TRACES, json={"topic": topic, "sub": "x"})
    assert response.status_code == 422
    assert response.json() == {
        "errors": {
            "traces": ["at most 10 traces may run at once per tenant: stop one (DELETE) or wait until one expires"]
        }
    }

    assert (await admin(srv, "DELETE", f"{TRACES}/{traces[0]}")).status_code == 204
    assert (await admin(srv, "GET", f"{TRACES}/{traces[0]}")).status_code == 404
    traces[0] = await start_trace(srv, topic, sub="x")
    listed = (await admin(srv, "GET", TRACES, params={"limit": 100})).json()["data"]
    assert sorted(t["id"] for t in listed if t["active"]) == sorted(traces)


async def test_a_broadcast_refused_for_its_size_is_explained(limited, clients, topic):
    trace = await start_trace(limited, topic, sub="gina")
    sender = await joined(clients(make_token("authenticated", sub="gina"), limited), topic)
    await sender.send_broadcast("big", {"blob": "x" * 2000})
    refused = await decision(limited, trace, lambda d: d["event"] == "big")
    assert (refused["kind"], refused["delivered"], refused["reason"]) == ("broadcast", False, "payload_too_large")


async def test_a_trace_stops_recording_when_it_expires(server, topic):
    trace = await start_trace(server, topic, seconds=1, sub="ghost")
    await rest_broadcast(server, topic, "during")
    deadline = asyncio.get_running_loop().time() + 5_000 * MS
    while (body := await read_trace(server, trace))["active"]:
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)
    await rest_broadcast(server, topic, "after")
    body = await read_trace(server, trace)
    assert [d["event"] for d in body["decisions"]] == ["during"]
    assert body["stopped_at"] is not None


async def test_read_only_tokens_may_read_traces_but_not_start_them(server, topic):
    trace = await start_trace(server, topic, sub="someone")
    read_only = admin_headers(admin="read")
    assert (await admin(server, "GET", f"{TRACES}/{trace}", headers=read_only)).status_code == 200
    assert (await admin(server, "GET", TRACES, headers=read_only)).status_code == 200
    assert (
        await admin(server, "POST", TRACES, headers=read_only, json={"topic": topic, "sub": "a"})
    ).status_code == 403
    assert (await admin(server, "DELETE", f"{TRACES}/{trace}", headers=read_only)).status_code == 403
    assert (await admin(server, "GET", f"{TRACES}/{trace}", headers={})).status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"topic": "t"}, "sub"),
        ({"topic": "t", "sub": "a", "connection": "b"}, "sub"),
        ({"topic": "t", "sub": "a", "seconds": 601}, "seconds"),
        ({"topic": "t", "sub": "a", "seconds": 0}, "seconds"),
        ({"topic": "", "sub": "a"}, "topic"),
        ({"topic": "t", "connection": "no-such-connection"}, "connection"),
    ],
)
async def test_bad_trace_requests_name_the_field(server, body, field):
    response = await admin(server, "POST", TRACES, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"]


async def test_the_trace_endpoints_are_documented(server):
    paths = (await admin(server, "GET", "/admin/v1/openapi.json")).json()["paths"]
    assert set(paths[f"{TRACES.replace(TENANT, '{id}')}"]) == {"get", "post"}
    assert set(paths[f"{TRACES.replace(TENANT, '{id}')}/{{trace}}"]) == {"get", "delete"}


async def test_traces_of_an_unknown_tenant_or_id_are_not_found(server):
    assert (await admin(server, "GET", "/admin/v1/tenants/nope/traces")).status_code == 404
    assert (await admin(server, "GET", f"{TRACES}/nope")).status_code == 404


async def test_the_bench_starts_and_stops_traces_through_the_admin_api(server, topic, tmp_path):
    """`bench fanout --trace` measures ours with a trace running; its helpers use this API."""
    ours = OurServer("ours", [], {}, tmp_path)
    ours.port = server.port
    trace = await asyncio.to_thread(ours.trace, ADMIN_SECRET, topic, "bench-traced")
    body = await read_trace(server, trace)
    assert (body["topic"], body["sub"], body["active"]) == (topic, "bench-traced", True)
    await asyncio.to_thread(ours.stop_trace, ADMIN_SECRET, trace)
    await asyncio.to_thread(ours.stop_trace, ADMIN_SECRET, trace)  # gone already: fine
    assert (await admin(server, "GET", f"{TRACES}/{trace}")).status_code == 404
