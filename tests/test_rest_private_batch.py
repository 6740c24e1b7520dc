"""Private messages of the REST batch endpoint: every topic's write policy checked in one
statement, with the per-topic answer, and the request bounded.

Policies are written on topics no other test uses, in the database of the
module's `cdc` server; deliveries are checked on raw sockets."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from conftest import make_token, messages_policy
from psycopg import sql
from wire import V2, Frame, RawClient, metric

pytestmark = pytest.mark.pg

WRITE_CHECKS = "realtime_tenants_write_authorization_check_count"
AUTH_ERRORS = "realtime_authorization_errors_total"
SERVICE_ROLE = make_token("service_role")


def prefix() -> str:
    return f"b{secrets.token_hex(4)}"


def private(topic: str, n: int = 0) -> dict[str, Any]:
    return {"topic": topic, "event": "e", "payload": {"t": topic, "n": n}, "private": True}


def is_broadcast(frame: Any) -> bool:
    return isinstance(frame, Frame) and frame.event == "broadcast"


async def nothing_before_marker(server, client: RawClient, topic: str) -> None:
    """Fail on any broadcast `client` got on `topic` before a service-role REST message sent now
    (the server delivers a topic's REST messages in order, and service_role passes every policy)."""
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        marker = {"topic": topic, "event": "e", "payload": {"marker": True}, "private": True}
        response = await http.post("/api/broadcast", json={"messages": [marker]}, headers=_auth(SERVICE_ROLE))
    assert response.status_code == 202
    await client.expect_nothing_before(
        lambda f: is_broadcast(f) and f.payload["payload"] == {"marker": True}, is_broadcast
    )


async def joined(server, token: str, topic: str) -> RawClient:
    client = await RawClient.open(server.socket_url(token, V2), V2)
    await client.join(f"realtime:{topic}", {"private": True})
    return client


async def test_each_topic_gets_its_own_answer_and_a_raising_policy_costs_only_its_topic(cdc, db):
    p = prefix()
    ok1, ok2, denied, boom = f"{p}:ok1", f"{p}:ok2", f"{p}:denied", f"{p}:boom"
    fn = sql.Identifier(f"{p}_check")
    db.execute(
        sql.SQL(
            "create function {}(t text) returns boolean language plpgsql as $$"
            " begin if t like '%:boom' then raise exception 'policy failed for %', t; end if;"
            " return t not like '%:denied'; end $$"
        ).format(fn)
    )
    db.execute(sql.SQL("grant execute on function {}(text) to authenticated").format(fn))
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    messages_policy(
        db, "insert", f"realtime.topic() like '{p}:%' and extension = 'broadcast' and {p}_check(realtime.topic())"
    )
    token = make_token("authenticated", sub="alice")
    clients = {t: await joined(cdc, token, t) for t in (ok1, ok2, denied, boom)}
    errors_before = metric(cdc.http_url, AUTH_ERRORS, tenant="realtime-dev")
    try:
        # Several messages per topic, topics interleaved: each allowed one is
        # delivered in order, the denied and the failing one not at all.
        messages = [private(t, n) for n in range(3) for t in (ok1, denied, boom, ok2)]
        async with httpx.AsyncClient(base_url=cdc.http_url) as http:
            response = await http.post("/api/broadcast", json={"messages": messages}, headers=_auth(token))
        assert response.status_code == 202
        for topic in (ok1, ok2):
            got = [(await clients[topic].expect(is_broadcast)).payload["payload"] for _ in range(3)]
            assert got == [{"t": topic, "n": n} for n in range(3)]
        for topic in (denied, boom):
            await nothing_before_marker(cdc, clients[topic], topic)
        assert metric(cdc.http_url, AUTH_ERRORS, tenant="realtime-dev") == errors_before + 1  # the raising policy, once
    finally:
        for client in clients.values():
            await client.close()


async def test_a_batch_of_2000_private_topics_is_checked_in_one_transaction(cdc, db):
    p = prefix()
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    messages_policy(db, "insert", f"realtime.topic() like '{p}:even-%'")
    token = make_token("authenticated", sub="alice")
    topics = [f"{p}:{'even' if i % 2 == 0 else 'odd'}-{i}" for i in range(2000)]
    watched_even, watched_odd = topics[1000], topics[1001]
    even_client = await joined(cdc, token, watched_even)
    odd_client = await joined(cdc, token, watched_odd)
    try:
        before = metric(cdc.http_url, WRITE_CHECKS, tenant="realtime-dev")
        async with httpx.AsyncClient(base_url=cdc.http_url, timeout=60) as http:
            body = {"messages": [private(t) for t in topics]}
            response = await http.post("/api/broadcast", json=body, headers=_auth(token))
        assert response.status_code == 202
        # One authorization transaction for the whole batch (it was one per topic).
        assert metric(cdc.http_url, WRITE_CHECKS, tenant="realtime-dev") - before == 1
        assert (await even_client.expect(is_broadcast)).payload["payload"] == {"t": watched_even, "n": 0}
        await nothing_before_marker(cdc, odd_client, watched_odd)
    finally:
        await even_client.close()
        await odd_client.close()


async def test_anon_without_a_write_policy_gets_nothing_delivered(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    client = await joined(cdc, make_token("authenticated", sub="alice"), topic)
    try:
        async with httpx.AsyncClient(base_url=cdc.http_url) as http:
            response = await http.post("/api/broadcast", json={"messages": [private(topic)]}, headers=_auth())
        assert response.status_code == 202
        await nothing_before_marker(cdc, client, topic)
    finally:
        await client.close()


async def test_a_batch_over_its_bounds_is_422_and_delivers_nothing(server_factory):
    server = server_factory({"REALTIME_BATCH_MAX_MESSAGES": "5", "REALTIME_BATCH_MAX_PRIVATE_TOPICS": "3"})
    public = [{"topic": "pub", "event": "e", "payload": {"n": n}} for n in range(6)]
    async with (
        await RawClient.open(server.socket_url(make_token(), V2), V2) as client,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        await client.join("realtime:pub")
        for messages, error in (
            (public, "should have at most 5 item(s)"),
            ([private(f"t{i}") for i in range(4)], "should have at most 3 distinct private topics"),
        ):
            response = await http.post("/api/broadcast", json={"messages": messages}, headers=_auth())
            assert (response.status_code, response.json()) == (422, {"errors": {"messages": [error]}})
        # At the bounds: accepted. A private topic repeated counts once. Its public messages
        # are the first broadcasts the client sees: nothing of the refused requests came before.
        accepted = [{"topic": "pub", "event": "e", "payload": {"accepted": n}} for n in range(2)]
        at_bounds = [*accepted, *(private(f"t{i % 3}") for i in range(3))]
        response = await http.post("/api/broadcast", json={"messages": at_bounds}, headers=_auth())
        assert response.status_code == 202
        got = [await client.expect(is_broadcast) for _ in range(2)]
        assert [frame.payload["payload"] for frame in got] == [{"accepted": 0}, {"accepted": 1}]


def _auth(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}
