"""Private channels authorised by RLS on realtime.messages, broadcast from the database, replay
(docs/protocol.md §4.4–4.6, §7).

Every test writes its own policies on topics no other test uses, in the
database of the module's `cdc` server, and talks to it over the wire."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MS, make_token, messages_policy, start_server
from psycopg import sql
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from wire import V1, V2, Frame, RawClient, eventually, parse_kind4

pytestmark = pytest.mark.pg


def prefix() -> str:
    """A topic prefix no other test's policies match."""
    return f"p{secrets.token_hex(4)}"


def user(sub: str = "alice", **claims: Any) -> str:
    return make_token("authenticated", sub=sub, **claims)


async def join_private(client: RawClient, topic: str, *, expect_ok: bool = True, **config: Any) -> Frame:
    return await client.join(f"realtime:{topic}", {"private": True, **config}, expect_ok=expect_ok)


def is_broadcast(frame: Any) -> bool:
    return (isinstance(frame, Frame) and frame.event == "broadcast") or isinstance(frame, bytes)


def is_marker(frame: Any) -> bool:
    """The broadcast a test sends with event "marker" after an action whose wrong effects it looks for."""
    if isinstance(frame, bytes):
        return frame[0] == 4 and parse_kind4(frame).event == "marker"
    return isinstance(frame, Frame) and frame.event == "broadcast" and frame.payload.get("event") == "marker"


def write_checks(cdc: Any) -> float:
    """How many write checks the server has finished (the count of its write check latency histogram)."""
    text = httpx.get(f"{cdc.http_url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("realtime_tenants_write_authorization_check_count")
    )


async def send_marker(cdc: Any, topic: str) -> None:
    """A service-role REST broadcast with event "marker" to the private stream of `topic`."""
    headers = {"Authorization": f"Bearer {make_token('service_role')}"}
    batch = {"messages": [{"topic": topic, "event": "marker", "payload": {}, "private": True}]}
    async with httpx.AsyncClient(base_url=cdc.http_url) as http:
        assert (await http.post("/api/broadcast", json=batch, headers=headers)).status_code == 202


async def broadcast_of(client: RawClient, timeout: float = 3000 * MS) -> dict[str, Any]:
    """The next broadcast as realtime-js would see its payload: {type, event, payload, meta?}."""
    frame = await client.expect(is_broadcast, timeout)
    if isinstance(frame, bytes):
        k4 = parse_kind4(frame)
        out = {
            "type": "broadcast",
            "event": k4.event,
            "payload": json.loads(k4.payload) if k4.encoding == 1 else k4.payload,
        }
        if k4.metadata:
            out["meta"] = json.loads(k4.metadata)
        return out
    return frame.payload


@pytest.mark.parametrize("vsn", [V2, V1])
async def test_a_read_policy_on_the_topic_decides_the_join(cdc, db, vsn):
    p = prefix()
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    async with await RawClient.open(cdc.socket_url(user(), vsn), vsn) as client:
        await join_private(client, f"{p}:room")
        reply = await join_private(client, "elsewhere", expect_ok=False)
        assert reply.response == {
            "reason": "Unauthorized: You do not have permissions to read from this Channel topic: elsewhere"
        }


async def test_anon_without_a_policy_for_its_role_is_refused(cdc, db):
    p = prefix()
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    async with await RawClient.open(cdc.socket_url(make_token("anon"), V2)) as client:
        reply = await join_private(client, f"{p}:room", expect_ok=False)
        assert reply.response["reason"].startswith("Unauthorized: ")


async def test_public_and_private_streams_of_one_topic_never_mix(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    messages_policy(db, "insert", f"realtime.topic() = '{topic}'")
    token = user()
    async with (
        await RawClient.open(cdc.socket_url(token, V2)) as private_a,
        await RawClient.open(cdc.socket_url(token, V2)) as private_b,
        await RawClient.open(cdc.socket_url(token, V2)) as public_a,
        await RawClient.open(cdc.socket_url(token, V2)) as public_b,
    ):
        pa = await join_private(private_a, topic)
        await join_private(private_b, topic)
        ua = await public_a.join(f"realtime:{topic}", {"private": False})
        await public_b.join(f"realtime:{topic}", {"private": False})
        await private_a.push(
            f"realtime:{topic}",
            "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"s": "private"}},
            join_ref=pa.join_ref,
        )
        await public_a.push(
            f"realtime:{topic}",
            "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"s": "public"}},
            join_ref=ua.join_ref,
        )
        assert (await broadcast_of(private_b))["payload"] == {"s": "private"}
        assert (await broadcast_of(public_b))["payload"] == {"s": "public"}
        # Both broadcasts have been fanned out (one publish queues every subscriber's copy), so a
        # copy on the wrong stream would be queued before a marker sent on each stream now.
        for sender, joined, receiver in ((private_a, pa, private_b), (public_a, ua, public_b)):
            await sender.push(
                f"realtime:{topic}",
                "broadcast",
                {"type": "broadcast", "event": "marker", "payload": {}},
                join_ref=joined.join_ref,
            )
            await receiver.expect_nothing_before(is_marker, is_broadcast)


async def test_a_denied_broadcast_is_dropped_without_an_ack(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")  # read, but no insert policy
    async with (
        await RawClient.open(cdc.socket_url(user(), V2)) as sender,
        await RawClient.open(cdc.socket_url(user("bob"), V2)) as receiver,
    ):
        joined = await join_private(sender, topic, broadcast={"ack": True})
        await join_private(receiver, topic)
        checks = write_checks(cdc)
        ref = await sender.push(
            f"realtime:{topic}",
            "broadcast",
            {"type": "broadcast", "event": "e", "payload": {}},
            join_ref=joined.join_ref,
        )
        # No broadcast of the sender's can mark this path: all are denied. The held broadcast is
        # handled in the same step that ends the write check, so once /metrics counts the check,
        # an ack or a copy would already be queued: before the heartbeat reply on the sender's
        # socket, before a service-role marker on the receiver's stream.
        await eventually(lambda: write_checks(cdc) > checks, what="the write check")
        await sender.nothing_pending(lambda f: isinstance(f, Frame) and f.ref == ref)
        await send_marker(cdc, topic)
        await receiver.expect_nothing_before(is_marker, is_broadcast)


async def test_an_allowed_broadcast_is_acked_and_delivered(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    messages_policy(db, "insert", f"realtime.topic() = '{topic}' and extension = 'broadcast'")
    async with (
        await RawClient.open(cdc.socket_url(user(), V2)) as sender,
        await RawClient.open(cdc.socket_url(user("bob"), V2)) as receiver,
    ):
        joined = await join_private(sender, topic, broadcast={"ack": True})
        await join_private(receiver, topic)
        for i in range(3):  # the first waits for the write check; order is kept
            ref = await sender.push(
                f"realtime:{topic}",
                "broadcast",
                {"type": "broadcast", "event": "e", "payload": {"i": i}},
                join_ref=joined.join_ref,
            )
        reply = await sender.reply_to(ref, f"realtime:{topic}")
        assert reply.status == "ok"
        assert [(await broadcast_of(receiver))["payload"]["i"] for _ in range(3)] == [0, 1, 2]


async def test_a_presence_only_policy_allows_presence_but_no_broadcasts(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}' and extension = 'presence'")
    messages_policy(db, "insert", f"realtime.topic() = '{topic}' and extension = 'presence'")
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        refused = await join_private(client, topic, expect_ok=False)  # presence not enabled: broadcast read decides
        assert refused.response["reason"].startswith("Unauthorized")
        joined = await join_private(client, topic, presence={"enabled": True, "key": "alice"})
        state = await client.expect_event(f"realtime:{topic}", "presence_state")
        assert state.payload == {}
        ref = await client.push(
            f"realtime:{topic}",
            "presence",
            {"type": "presence", "event": "track", "payload": {"online": True}},
            join_ref=joined.join_ref,
        )
        assert (await client.reply_to(ref, f"realtime:{topic}")).status == "ok"
        diff = await client.expect_event(f"realtime:{topic}", "presence_diff")
        assert list(diff.payload["joins"]) == ["alice"]


async def test_a_denied_track_is_answered_with_an_error(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        joined = await join_private(client, topic, presence={"enabled": True})
        ref = await client.push(
            f"realtime:{topic}",
            "presence",
            {"type": "presence", "event": "track", "payload": {}},
            join_ref=joined.join_ref,
        )
        reply = await client.reply_to(ref, f"realtime:{topic}")
        assert (reply.status, reply.response) == ("error", {})


async def test_x_headers_reach_policies_as_request_headers(cdc, db):
    p = prefix()
    messages_policy(
        db,
        "select",
        f"realtime.topic() like '{p}:%' and current_setting('request.headers', true)::jsonb ->> 'x-team' = 'blue'",
    )
    async with await RawClient.open(cdc.socket_url(user(), V2), headers={"X-Team": "blue"}) as blue:
        await join_private(blue, f"{p}:room")
    async with await RawClient.open(cdc.socket_url(user(), V2), headers={"X-Team": "red"}) as red:
        assert (await join_private(red, f"{p}:room", expect_ok=False)).status == "error"


async def test_a_token_refresh_that_revokes_read_closes_the_channel(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    sub = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'"
    messages_policy(db, "select", f"realtime.topic() = '{topic}' and {sub} = 'alice'")
    async with await RawClient.open(cdc.socket_url(user("alice"), V2)) as client:
        joined = await join_private(client, topic)
        await client.push(f"realtime:{topic}", "access_token", {"access_token": user("bob")}, join_ref=joined.join_ref)
        system = await client.expect_event(f"realtime:{topic}", "system")
        assert system.payload == {
            "extension": "system",
            "status": "error",
            "message": f"You no longer have permission to read from this Channel topic: {topic}",
            "channel": topic,
        }
        close = await client.expect_event(f"realtime:{topic}", "phx_close")
        assert close.ref == joined.join_ref


@pytest.mark.parametrize("vsn", [V2, V1])
async def test_realtime_send_reaches_private_subscribers_with_its_id(cdc, db, vsn):
    p = prefix()
    topic = f"{p}:notes"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    async with await RawClient.open(cdc.socket_url(user(), vsn), vsn) as client:
        await join_private(client, topic)
        db.execute("select realtime.send(jsonb_build_object('text', 'hi'), 'note', %s)", (topic,))
        message = await broadcast_of(client)
        message_id = message["meta"]["id"]
        assert message == {
            "type": "broadcast",
            "event": "note",
            "payload": {"text": "hi", "id": message_id},
            "meta": {"id": message_id},
        }


async def test_realtime_send_with_private_false_reaches_public_channels_only(cdc, db):
    p = prefix()
    topic = f"{p}:public"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    async with (
        await RawClient.open(cdc.socket_url(user(), V2)) as public,
        await RawClient.open(cdc.socket_url(user(), V2)) as private,
    ):
        await public.join(f"realtime:{topic}", {})
        await join_private(private, topic)
        db.execute("select realtime.send('{\"n\": 1}'::jsonb, 'e', %s, false)", (topic,))
        db.execute("select realtime.send('{}'::jsonb, 'marker', %s, true)", (topic,))
        assert (await broadcast_of(public))["payload"]["n"] == 1
        # Database broadcasts arrive in commit order: a wrong copy of the first comes before the marker.
        await private.expect_nothing_before(is_marker, is_broadcast)


async def test_a_broadcast_changes_trigger_sends_the_documented_payload(cdc, db):
    p = prefix()
    table = f"chat_{secrets.token_hex(3)}"
    db.execute(sql.SQL("create table {} (id int primary key, room int, body text)").format(sql.Identifier(table)))
    db.execute(
        sql.SQL(
            "create function {f}() returns trigger language plpgsql security definer as $$ begin "
            "perform realtime.broadcast_changes('{p}:' || coalesce(new.room, old.room)::text, tg_op, tg_op, "
            "tg_table_name, tg_table_schema, new, old); return null; end $$"
        ).format(f=sql.Identifier(f"{table}_fn"), p=sql.SQL(p))
    )
    db.execute(
        sql.SQL("create trigger t after insert or update or delete on {t} for each row execute function {f}()").format(
            t=sql.Identifier(table), f=sql.Identifier(f"{table}_fn")
        )
    )
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        await join_private(client, f"{p}:1")
        db.execute(sql.SQL("insert into {} values (1, 1, 'hello')").format(sql.Identifier(table)))
        db.execute(sql.SQL("update {} set body = 'bye' where id = 1").format(sql.Identifier(table)))
        db.execute(sql.SQL("delete from {} where id = 1").format(sql.Identifier(table)))
        insert, update, delete = [(await broadcast_of(client))["payload"] for _ in range(3)]
        for payload, op in ((insert, "INSERT"), (update, "UPDATE"), (delete, "DELETE")):
            assert payload["operation"] == op and payload["table"] == table and payload["schema"] == "public"
            assert isinstance(payload["id"], str)
        assert insert["record"] == {"id": 1, "room": 1, "body": "hello"} and insert["old_record"] is None
        assert update["record"]["body"] == "bye" and update["old_record"]["body"] == "hello"
        assert delete["record"] is None and delete["old_record"]["body"] == "bye"


async def test_replay_sends_the_latest_messages_oldest_first_and_skips_their_live_copies(cdc, db):
    p = prefix()
    topic = f"{p}:replay"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    since = int(time.time() * 1000) - 60_000
    for i in range(4):
        db.execute("select realtime.send(jsonb_build_object('i', %s), 'e', %s)", (i, topic))
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        joined = await join_private(client, topic, broadcast={"replay": {"since": since, "limit": 2}})
        replayed = [await client.expect_event(f"realtime:{topic}", "broadcast") for _ in range(2)]
        assert [f.payload["payload"]["i"] for f in replayed] == [2, 3]
        for frame in replayed:
            assert frame.join_ref == joined.join_ref and frame.ref is None
            assert frame.payload["meta"]["replayed"] is True
        # A live copy of a replayed message would come through the database stream, before this.
        db.execute("select realtime.send('{}'::jsonb, 'marker', %s)", (topic,))
        await client.expect_nothing_before(is_marker, is_broadcast)


async def test_replay_errors_carry_the_upstream_texts(cdc, db):
    p = prefix()
    messages_policy(db, "select", f"realtime.topic() = '{p}:bad'")
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        public = await client.join("realtime:replay-public", {"broadcast": {"replay": {"since": 0}}}, expect_ok=False)
        assert public.response == {"reason": "UnableToReplayMessages: Replay is not allowed for public channels"}
        invalid = await join_private(client, f"{p}:bad", broadcast={"replay": {"since": "x"}}, expect_ok=False)
        assert invalid.response == {"reason": "UnableToReplayMessages: Replay params are not valid"}


async def test_rest_private_messages_need_the_write_policy(cdc, db):
    p = prefix()
    allowed, denied = f"{p}:ok", f"{p}:no"
    messages_policy(db, "select", f"realtime.topic() like '{p}:%'")
    messages_policy(db, "insert", f"realtime.topic() = '{allowed}'")
    token = user()
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        await RawClient.open(cdc.socket_url(token, V2)) as ok_client,
        await RawClient.open(cdc.socket_url(token, V2)) as no_client,
        httpx.AsyncClient(base_url=cdc.http_url) as http,
    ):
        await join_private(ok_client, allowed)
        await join_private(no_client, denied)
        batch = {
            "messages": [{"topic": t, "event": "e", "payload": {"t": t}, "private": True} for t in (allowed, denied)]
        }
        assert (await http.post("/api/broadcast", json=batch, headers=headers)).status_code == 202
        assert (await broadcast_of(ok_client))["payload"] == {"t": allowed}
        # The batch is answered after its messages are published; a copy for the denied topic
        # would be queued before this marker.
        await send_marker(cdc, denied)
        await no_client.expect_nothing_before(is_marker, is_broadcast)
        single_ok = await http.post(f"/api/broadcast/{allowed}/events/e?private=true", json={"x": 1}, headers=headers)
        assert single_ok.status_code == 202
        assert (await broadcast_of(ok_client))["payload"] == {"x": 1}
        single_no = await http.post(f"/api/broadcast/{denied}/events/e?private=true", json={"x": 1}, headers=headers)
        assert (single_no.status_code, single_no.json()) == (403, {"message": "Unauthorized"})


async def test_service_role_bypasses_policies(cdc, db):
    p = prefix()
    topic = f"{p}:svc"
    async with await RawClient.open(cdc.socket_url(make_token("service_role"), V2)) as client:
        await join_private(client, topic)
        db.execute("select realtime.send('{\"a\": 1}'::jsonb, 'e', %s)", (topic,))
        assert (await broadcast_of(client))["payload"]["a"] == 1


async def test_database_broadcasts_survive_a_slow_start(cdc, db):
    """Messages sent right after a join are never lost to the stream's start-up."""
    p = prefix()
    topic = f"{p}:burst"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        await join_private(client, topic)
        with db.transaction():
            for i in range(50):
                db.execute("select realtime.send(jsonb_build_object('i', %s), 'e', %s)", (i, topic))
        got = [(await broadcast_of(client))["payload"]["i"] for _ in range(50)]
        assert got == list(range(50))


@pytest.mark.slow
async def test_after_a_restart_database_broadcasts_are_delivered_once_and_old_ones_not_replayed(pg_dsn, fresh_database):
    url = fresh_database
    service = make_token("service_role")
    server = start_server(url)
    try:
        with psycopg.connect(url, autocommit=True) as db:
            async with await RawClient.open(server.socket_url(service, V2)) as client:
                await join_private(client, "restart:room")
                db.execute("select realtime.send('{\"n\": 1}'::jsonb, 'e', 'restart:room')")
                assert (await broadcast_of(client))["payload"]["n"] == 1
            server.stop()
            db.execute("select realtime.send('{\"n\": 2}'::jsonb, 'e', 'restart:room')")  # nobody listening
            server = start_server(url)
            async with await RawClient.open(server.socket_url(service, V2)) as client:
                await join_private(client, "restart:room")
                db.execute("select realtime.send('{\"n\": 3}'::jsonb, 'e', 'restart:room')")
                db.execute("select realtime.send('{}'::jsonb, 'marker', 'restart:room')")
                # The stream delivers in commit order: n = 2 replayed or n = 3 twice would come first.
                assert (await broadcast_of(client))["payload"]["n"] == 3
                await client.expect_nothing_before(is_marker, is_broadcast)
    finally:
        server.stop()
        server.drop_slots()


async def test_the_python_client_joins_a_private_channel_and_gets_database_broadcasts(cdc, db):
    p = prefix()
    topic = f"{p}:py"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    client = AsyncRealtimeClient(cdc.ws_url, user())
    await client.connect()
    try:
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        subscribed = asyncio.Event()
        channel = client.channel(topic, {"config": {"private": True}})
        channel.on_broadcast("note", received.put_nowait)
        await channel.subscribe(
            lambda state, error: subscribed.set() if state == RealtimeSubscribeStates.SUBSCRIBED else None
        )
        await asyncio.wait_for(subscribed.wait(), 5000 * MS)
        db.execute("select realtime.send(jsonb_build_object('text', 'hi'), 'note', %s)", (topic,))
        message = await asyncio.wait_for(received.get(), 5000 * MS)
        assert message["event"] == "note"
        assert message["payload"]["text"] == "hi"
    finally:
        await client.close()


async def test_the_first_track_evaluates_presence_read_when_the_join_did_not(cdc, db):
    p = prefix()
    topic = f"{p}:room"
    messages_policy(db, "select", f"realtime.topic() = '{topic}'")
    messages_policy(db, "insert", f"realtime.topic() = '{topic}' and extension = 'presence'")
    async with await RawClient.open(cdc.socket_url(user(), V2)) as client:
        joined = await join_private(client, topic, presence={"key": "alice"})  # presence not enabled
        ref = await client.push(
            f"realtime:{topic}",
            "presence",
            {"type": "presence", "event": "track", "payload": {}},
            join_ref=joined.join_ref,
        )
        assert (await client.reply_to(ref, f"realtime:{topic}")).status == "ok"
        diff = await client.expect_event(f"realtime:{topic}", "presence_diff")  # read evaluated: diffs flow
        assert list(diff.payload["joins"]) == ["alice"]
