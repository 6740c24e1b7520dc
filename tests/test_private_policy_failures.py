"""Private channels when the policies or the authorization pool fail, end to end.

A policy that raises refuses that join with upstream's Unauthorized text
(`realtime_channel.ex` maps `:rls_policy_error` to it) and costs nothing else;
with DB_POOL_SIZE=1 concurrent private joins share one connection and each is
answered, correctly; a connection held past the pool's 5 s wait gives
upstream's IncreaseConnectionPool error."""

from __future__ import annotations

import asyncio
import secrets

import psycopg
import pytest
from conftest import MS, make_token, messages_policy
from wire import V2, Frame, RawClient, eventually, metric

pytestmark = pytest.mark.pg


def user(sub: str = "alice") -> str:
    return make_token("authenticated", sub=sub)


def authorization_errors(http_url: str) -> float:
    return metric(http_url, "realtime_authorization_errors_total")


def raising_on(p: str) -> str:
    """A condition that allows `p:*` and raises division_by_zero on `p:boom` (not a
    constant: the planner would fold 1 / 0 and raise for every topic)."""
    return (
        f"case when realtime.topic() = '{p}:boom' then 1 / (length(realtime.topic()) - length(realtime.topic())) = 1"
        f" else realtime.topic() like '{p}:%' end"
    )


def unauthorized(topic: str) -> dict[str, str]:
    return {"reason": f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"}


def authorization_backends(dsn: str, condition: str = "true") -> int:
    """How many of the server's authorization connections to this database satisfy `condition`."""
    with psycopg.connect(dsn, autocommit=True) as db:
        [(n,)] = db.execute(
            "select count(*) from pg_stat_activity where application_name = 'realtime_authorization'"
            " and datname = current_database() and " + condition
        ).fetchall()
    return n


async def join_private(client: RawClient, topic: str) -> Frame:
    return await client.join(f"realtime:{topic}", {"private": True}, expect_ok=False)


async def test_a_read_policy_that_raises_refuses_only_that_topic(cdc, db):
    p = f"r{secrets.token_hex(3)}"
    messages_policy(db, "select", raising_on(p))
    before = authorization_errors(cdc.http_url)
    async with await RawClient.open(cdc.socket_url(user(), V2), V2) as client:
        reply = await join_private(client, f"{p}:boom")
        assert (reply.status, reply.response) == ("error", unauthorized(f"{p}:boom"))
        assert authorization_errors(cdc.http_url) == before + 1
        # The same socket still joins a topic the policy allows.
        assert (await join_private(client, f"{p}:fine")).status == "ok"
        assert (await client.heartbeat()).status == "ok"


async def test_a_write_policy_that_raises_drops_the_broadcast_and_keeps_the_channel(cdc, db):
    p = f"w{secrets.token_hex(3)}"
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    messages_policy(db, "insert", raising_on(p))
    topic = f"realtime:{p}:boom"
    async with (
        await RawClient.open(cdc.socket_url(user("alice"), V2), V2) as sender,
        await RawClient.open(cdc.socket_url(user("bob"), V2), V2) as receiver,
    ):
        other = f"realtime:{p}:fine"
        join_ref = (await sender.join(topic, {"private": True, "broadcast": {"ack": True}})).join_ref
        other_ref = (await sender.join(other, {"private": True, "broadcast": {"ack": True}})).join_ref
        await receiver.join(topic, {"private": True})
        await receiver.join(other, {"private": True})
        before = authorization_errors(cdc.http_url)
        message = {"type": "broadcast", "event": "e", "payload": {"n": 1}}
        await sender.push(topic, "broadcast", message, join_ref=join_ref)
        await eventually(lambda: authorization_errors(cdc.http_url) == before + 1, what="the raising write check")
        # Then the same message on a topic the policy allows, as a marker: the first
        # reply and the first broadcast are its (a denied broadcast gets no ack, as upstream).
        ack = await sender.push(other, "broadcast", message, join_ref=other_ref)
        reply = await sender.expect(lambda f: isinstance(f, Frame) and f.is_reply)
        assert (reply.topic, reply.ref, reply.status) == (other, ack, "ok"), reply
        got = await receiver.expect(lambda f: isinstance(f, Frame) and f.event == "broadcast")
        assert (got.topic, got.payload) == (other, message), got
        assert (await sender.heartbeat()).status == "ok"


async def test_with_one_pooled_connection_concurrent_private_joins_are_all_answered_correctly(server_factory):
    srv = server_factory({"DB_POOL_SIZE": "1"})
    p = f"c{secrets.token_hex(3)}"
    with psycopg.connect(srv.database_url, autocommit=True) as db:
        messages_policy(db, "select", f"realtime.topic() like '{p}:ok%'")
    sockets, per_socket = 8, 6
    clients = [await RawClient.open(srv.socket_url(user(f"u{i}"), V2), V2) for i in range(sockets)]
    try:
        topics = [[f"{p}:{'ok' if (i + j) % 2 else 'no'}{i}-{j}" for j in range(per_socket)] for i in range(sockets)]

        async def join_all(client: RawClient, names: list[str]) -> list[Frame]:
            # Every join of the socket is sent before any reply is read.
            for k, name in enumerate(names):
                await client.push(f"realtime:{name}", "phx_join", {"config": {"private": True}}, join_ref=str(k + 1))
            replies: dict[str, Frame] = {}
            while len(replies) < len(names):
                frame = await client.expect(lambda f: isinstance(f, Frame) and f.is_reply, 10_000 * MS)
                assert frame.ref not in replies, frame
                replies[frame.ref] = frame
            return [replies[str(k + 1)] for k in range(len(names))]

        replies = await asyncio.gather(*(join_all(c, names) for c, names in zip(clients, topics, strict=True)))
        for names, frames in zip(topics, replies, strict=True):
            for name, frame in zip(names, frames, strict=True):
                if ":ok" in name:
                    assert (name, frame.status, frame.response) == (name, "ok", {"postgres_changes": []})
                else:
                    assert (name, frame.status, frame.response) == (name, "error", unauthorized(name))
        assert authorization_backends(srv.database_url) == 1
    finally:
        for client in clients:
            await client.close()


@pytest.mark.slow
async def test_a_join_waiting_past_the_pool_timeout_gets_increase_connection_pool(server_factory):
    srv = server_factory({"DB_POOL_SIZE": "1"})
    p = f"x{secrets.token_hex(3)}"
    with psycopg.connect(srv.database_url, autocommit=True) as db:
        # The slow topic's check holds the only connection for 6 s; the pool waits 5 s.
        messages_policy(
            db,
            "select",
            f"realtime.topic() like '{p}:%' and (realtime.topic() <> '{p}:slow' or (select true from pg_sleep(6)))",
        )
    before = authorization_errors(srv.http_url)
    async with (
        await RawClient.open(srv.socket_url(user("slow"), V2), V2) as slow,
        await RawClient.open(srv.socket_url(user("waiting"), V2), V2) as waiting,
    ):
        slow_ref = await slow.push(f"realtime:{p}:slow", "phx_join", {"config": {"private": True}}, join_ref="1")
        await eventually(
            lambda: authorization_backends(srv.database_url, "wait_event = 'PgSleep'") == 1,
            what="the slow check holding the connection",
        )
        ref = await waiting.push(f"realtime:{p}:room", "phx_join", {"config": {"private": True}}, join_ref="1")
        waiting_reply = await waiting.reply_to(ref, f"realtime:{p}:room", 10_000 * MS)
        assert (waiting_reply.status, waiting_reply.response) == (
            "error",
            {"reason": "IncreaseConnectionPool: Please increase your connection pool size"},
        )
        assert authorization_errors(srv.http_url) == before + 1
        slow_reply = await slow.reply_to(slow_ref, f"realtime:{p}:slow", 10_000 * MS)
        assert slow_reply.status == "ok"
        # The pool is free again: the refused socket joins now.
        ref = await waiting.push(f"realtime:{p}:room", "phx_join", {"config": {"private": True}}, join_ref="2")
        assert (await waiting.reply_to(ref, f"realtime:{p}:room")).status == "ok"
