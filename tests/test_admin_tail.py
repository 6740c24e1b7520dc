"""The live tail (`GET /admin/v1/tenants/{id}/tail`, admin/tail.py): server-sent events of what the
server delivers on one stream, end to end against `realtime-core serve`, and its observer on a Hub.

Viewers are raw sockets reading the chunked event stream with httptools, so a test can stop
reading (a slow viewer) or go away without a goodbye."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from typing import Any

import httptools
import httpx
import orjson
import pytest
from conftest import MS, admin_token, make_token
from fakes import Client, make_app, settle
from test_postgres_changes import new_table, run, subscribe
from wire import V2, Frame, RawClient, metric

from realtime_core.admin import tail as tail_module
from realtime_core.admin import tail_relay
from realtime_core.admin.tail import Tail, identity, to_data
from realtime_core.admin.tail_relay import TailRelay
from realtime_core.hub import Audience, Publication, StreamKey
from realtime_core.protocol.message import BINARY, UserBroadcast

pytestmark = pytest.mark.pg

TENANT = "realtime-dev"
TIMEOUT = 5000 * MS


class Viewer:
    """One tail over a raw socket: events() parses the chunked SSE body as it comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.body = b""
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    @classmethod
    async def open(cls, http_url: str, query: str, token: str | None = None) -> Viewer:
        host, port = http_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /admin/v1/tenants/{TENANT}/tail?{query} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token or admin_token()}\r\n\r\n".encode()
        )
        viewer = cls(reader, writer)
        while not viewer.status:
            await viewer._read()
        return viewer

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    async def _read(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        if not data:
            raise ConnectionError("the server closed the tail")
        self.parser.feed_data(data)

    async def event(self) -> tuple[str, Any]:
        """The next event (kind, data); comments are skipped."""
        while True:
            while b"\n\n" not in self.body:
                await self._read()
            block, self.body = self.body.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if not line.startswith(":"))
            if fields:
                return fields["event"], orjson.loads(fields["data"])

    async def event_or_end(self) -> tuple[str, Any] | None:
        """The next event or comment block, or None once the server closed the connection."""
        while b"\n\n" not in self.body:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                return None
            self.parser.feed_data(data)
        block, self.body = self.body.split(b"\n\n", 1)
        return ("comment", block.decode())

    async def events_until(self, last: Any, timeout: float = TIMEOUT) -> list[tuple[str, Any]]:
        """Events up to and including the first whose data's event is `last`."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                kind, data = await self.event()
                seen.append((kind, data))
                if data.get("event") == last or data.get("payload", {}).get("event") == last:
                    return seen

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def rest_broadcast(http_url: str, topic: str, event: str, payload: Any, count: int = 1) -> None:
    body = {"messages": [{"topic": topic, "event": event, "payload": payload} for _ in range(count)]}
    async with httpx.AsyncClient(base_url=http_url, timeout=30) as http:
        response = await http.post("/api/broadcast", json=body, headers={"Authorization": f"Bearer {make_token()}"})
    assert response.status_code == 202, response.text


async def test_the_tail_shows_a_broadcast_a_presence_diff_and_a_change_in_order(cdc, db):
    table = new_table(db, "id int primary key, body text")
    topic = f"tail-{secrets.token_hex(3)}"
    viewer = await Viewer.open(cdc.http_url, f"topic={topic}")
    assert viewer.status == 200
    try:
        async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
            reply, _ = await subscribe(
                client,
                topic,
                [{"event": "INSERT", "schema": "public", "table": table}],
                broadcast={"self": True},
                presence={"key": "me", "enabled": True},
            )
            rt = f"realtime:{topic}"
            await client.push(rt, "broadcast", {"type": "broadcast", "event": "hello", "payload": {"n": 1}})
            await client.expect_event(rt, "broadcast")
            await client.push(
                rt, "presence", {"type": "presence", "event": "track", "payload": {"x": 1}}, join_ref=reply.join_ref
            )
            await client.expect_event(rt, "presence_diff")
            run(db, "insert into {t} values (7, 'row')", table)
            await client.expect_event(rt, "postgres_changes")
            events = await viewer.events_until("postgres_changes")
    finally:
        await viewer.close()
    assert [kind for kind, _ in events] == ["broadcast", "presence", "postgres_changes"]
    broadcast, presence, change = (data for _, data in events)
    assert broadcast["topic"] == topic and broadcast["event"] == "broadcast"
    assert broadcast["payload"] == {"type": "broadcast", "event": "hello", "payload": {"n": 1}}
    assert presence["event"] == "presence_diff" and list(presence["payload"]["joins"]) == ["me"]
    assert change["payload"]["data"]["record"] == {"id": 7, "body": "row"}
    assert all(data["at"].endswith("Z") for _, data in events)


async def test_the_tail_filters_by_kind_and_stream(cdc):
    topic = f"tail-{secrets.token_hex(3)}"
    viewer = await Viewer.open(cdc.http_url, f"topic={topic}&kinds=presence")
    try:
        async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
            reply = await client.join(f"realtime:{topic}", {"presence": {"key": "k", "enabled": True}})
            await rest_broadcast(cdc.http_url, topic, "not-shown", {})
            await client.expect_event(f"realtime:{topic}", "broadcast")
            await client.push(
                f"realtime:{topic}",
                "presence",
                {"type": "presence", "event": "track", "payload": {}},
                join_ref=reply.join_ref,
            )
            [(kind, data)] = await viewer.events_until("presence_diff")
            assert kind == "presence" and data["event"] == "presence_diff"
    finally:
        await viewer.close()


async def test_a_private_viewer_sees_the_private_stream_only(cdc):
    topic = f"tail-{secrets.token_hex(3)}"
    # A read-only admin token may tail (a GET).
    viewer = await Viewer.open(cdc.http_url, f"topic={topic}&private=true", admin_token(admin="read"))
    assert viewer.status == 200
    service = make_token("service_role")  # passes every policy
    try:
        async with (
            await RawClient.open(cdc.socket_url(service, V2)) as public,
            await RawClient.open(cdc.socket_url(service, V2)) as private,
        ):
            await public.join(f"realtime:{topic}")
            await private.join(f"realtime:{topic}", {"private": True})
            await rest_broadcast(cdc.http_url, topic, "public-one", {})
            await public.expect_event(f"realtime:{topic}", "broadcast")
            body = {"messages": [{"topic": topic, "event": "private-one", "payload": {}, "private": True}]}
            async with httpx.AsyncClient(base_url=cdc.http_url) as http:
                headers = {"Authorization": f"Bearer {service}"}
                assert (await http.post("/api/broadcast", json=body, headers=headers)).status_code == 202
            [(kind, data)] = await viewer.events_until("private-one")  # nothing public came first
            assert (kind, data["topic"]) == ("broadcast", topic)
    finally:
        await viewer.close()


async def test_bad_queries_unknown_tenants_and_client_tokens_are_refused(cdc):
    async with httpx.AsyncClient(base_url=cdc.http_url) as http:
        auth = {"Authorization": f"Bearer {admin_token()}"}
        bad = await http.get(f"/admin/v1/tenants/{TENANT}/tail?topic=t&kinds=broadcast,typo", headers=auth)
        assert bad.status_code == 422 and "kinds" in bad.json()["errors"]
        missing = await http.get(f"/admin/v1/tenants/{TENANT}/tail", headers=auth)
        assert missing.status_code == 422 and "topic" in missing.json()["errors"]
        unknown = await http.get("/admin/v1/tenants/nope/tail?topic=t", headers=auth)
        assert unknown.status_code == 404
        client = await http.get(
            f"/admin/v1/tenants/{TENANT}/tail?topic=t", headers={"Authorization": f"Bearer {make_token()}"}
        )
        assert client.status_code == 403


async def test_viewers_past_the_cap_are_refused_and_a_closed_one_frees_its_place(server_factory):
    server = server_factory({"REALTIME_TAIL_MAX_VIEWERS": "2"})
    first = await Viewer.open(server.http_url, "topic=a")
    second = await Viewer.open(server.http_url, "topic=b")
    third = await Viewer.open(server.http_url, "topic=c")
    assert (first.status, second.status, third.status) == (200, 200, 429)
    await third.close()
    await first.close()  # the viewer goes away: the server notices the closed connection

    async def reopened() -> int:
        viewer = await Viewer.open(server.http_url, "topic=d")
        await viewer.close()
        return viewer.status

    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while (status := await reopened()) == 429 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(10 * MS)
    assert status == 200
    await second.close()


async def test_a_stopping_server_ends_open_tails(server_factory):
    server = server_factory()
    viewer = await Viewer.open(server.http_url, "topic=room")
    await viewer.event_or_end()  # the opening comment
    assert await asyncio.to_thread(server.stop) == 0
    assert await viewer.event_or_end() is None
    await viewer.close()


async def test_a_slow_viewer_loses_the_oldest_and_is_told_how_many(server_factory):
    buffer = 4
    server = server_factory({"REALTIME_TAIL_BUFFER": str(buffer)})
    topic = f"flood-{secrets.token_hex(3)}"
    viewer = await Viewer.open(server.http_url, f"topic={topic}")
    big = "x" * 100_000
    sent = 240  # 24 MB of events: more than the socket buffers between the server and a viewer that does not read
    async with await RawClient.open(server.socket_url(make_token(), V2), max_size=None) as client:
        await client.join(f"realtime:{topic}")
        received = 0

        async def drain() -> None:
            nonlocal received
            while received < sent + 1:
                frame = await client.recv(30 * TIMEOUT)
                if isinstance(frame, Frame) and frame.event == "broadcast":
                    received += 1

        draining = asyncio.create_task(drain())
        for i in range(0, sent, 20):
            await rest_broadcast(server.http_url, topic, f"e{i}", {"big": big}, count=20)
        await rest_broadcast(server.http_url, topic, "last", {})
        await asyncio.wait_for(draining, 30 * TIMEOUT)
    # The subscriber got everything; the viewer, reading only now, got a bounded part of it.
    events = await viewer.events_until("last", timeout=30 * TIMEOUT)
    await viewer.close()
    dropped = sum(data["count"] for kind, data in events if kind == "dropped")
    shown = [data for kind, data in events if kind == "broadcast"]
    assert dropped > 0
    assert dropped + len(shown) == sent + 1
    assert shown[-1]["payload"]["event"] == "last"
    # The oldest are the ones dropped: what is shown keeps the order sent, and ends with the newest.
    batches = [int(data["payload"]["event"][1:]) for data in shown[:-1]]
    assert batches == sorted(batches) and batches[-1] == sent - 20
    # A burst of 20 in one loop turn leaves the viewer its last `buffer` (the unit test below
    # checks the buffer's bound itself).
    assert len(shown) <= (sent // 20) * buffer + 1


async def test_tailing_adds_no_receiver_and_no_channel(cdc):
    topic = f"tail-{secrets.token_hex(3)}"
    joined = metric(cdc.http_url, "realtime_channels_joined")
    streams = metric(cdc.http_url, "realtime_streams")
    viewer = await Viewer.open(cdc.http_url, f"topic={topic}")
    try:
        assert metric(cdc.http_url, "realtime_channels_joined") == joined
        assert metric(cdc.http_url, "realtime_streams") == streams
        # Nobody subscribed: nothing is delivered, so the tail shows nothing (a later marker comes first).
        await rest_broadcast(cdc.http_url, topic, "unseen", {})
        async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
            await client.join(f"realtime:{topic}")
            await rest_broadcast(cdc.http_url, topic, "seen", {})
            [(_, data)] = await viewer.events_until("seen")
            assert data["payload"]["event"] == "seen"
    finally:
        await viewer.close()


# The observer on a Hub, without a server.


class Counting:
    """A DeliveryObserver recording every call (as usage metering would count)."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def accepted(self, *args: object) -> None:
        raise AssertionError("the tail must not report accepted messages")

    def delivered(self, tenant, publication, subs, count, nbytes) -> None:
        self.counts.append(count)


async def test_the_observer_is_in_the_hub_only_while_a_viewer_is_open_and_counts_nothing():
    app = make_app()
    tenant = app.tenants.get(TENANT)
    tail = Tail(app.hub, max_viewers=2, buffer=3)
    counting = Counting()
    app.hub.observers.append(counting)
    alice = Client(app)
    alice.join("realtime:room")
    await settle()
    key = StreamKey(TENANT, False, "room")
    viewer = tail.open(TENANT, "room", False, frozenset(Audience))
    private = tail.open(TENANT, "room", True, frozenset(Audience))
    assert tail in app.hub.observers
    binary = Publication("realtime:room", "broadcast", user=UserBroadcast("bin", b"\x00\x01", BINARY))
    assert app.hub.publish(tenant, key, binary, app.now()) == 1
    for i in range(4):
        app.hub.publish(tenant, key, Publication("realtime:room", "broadcast", orjson.dumps({"i": i})), app.now())
    assert counting.counts == [1] * 5  # the viewer is not a receiver
    # A broadcast nobody received (its sender alone, with `self: false`) is not shown.
    [sender] = app.hub.subscribers(key)
    skipped = Publication("realtime:room", "broadcast", orjson.dumps({"i": "self"}))
    assert app.hub.publish(tenant, key, skipped, app.now(), exclude=sender) == 0
    assert all(pub is not skipped for _, _, pub, _ in viewer.buffer)
    assert viewer.dropped == 2 and len(viewer.buffer) == 3
    assert not private.buffer and not private.dropped  # the public stream only
    tail.close(TENANT, private)
    events = viewer.events()
    assert (await anext(events)).startswith(b":")
    assert await anext(events) == b'event: dropped\ndata: {"count":2}\n\n'
    first = await anext(events)
    assert first.startswith(b"event: broadcast\n") and orjson.loads(first.split(b"data: ")[1])["payload"]["i"] == 1
    tail.close(TENANT, viewer)
    assert tail not in app.hub.observers and tail.viewers(TENANT) == 0
    # A binary user broadcast is shown as base64, marked.
    viewer = tail.open(TENANT, "room", False, frozenset(Audience))
    app.hub.publish(tenant, key, binary, app.now())
    events = viewer.events()
    await anext(events)
    data = orjson.loads((await anext(events)).split(b"data: ")[1])
    assert data["binary"] is True and base64.b64decode(data["payload"]["payload"]) == b"\x00\x01"
    tail.close(TENANT, viewer)


async def test_a_node_observes_deliveries_only_while_another_node_watches_the_stream(monkeypatch):
    """The forwarding side of a cluster's tail (tail_relay.py), in one process: an outbox and the
    observer exist from another node's announcement until it withdraws it or it expires."""
    monkeypatch.setattr(tail_relay, "EXPIRES_S", 0.2)
    app = make_app()
    tenant = app.tenants.get(TENANT)
    tail = Tail(app.hub, max_viewers=2, buffer=2)
    relay = TailRelay(tail, app)
    alice = Client(app)
    alice.join("realtime:room")
    await settle()
    key = StreamKey(TENANT, False, "room")
    stream = (TENANT, "realtime:room")
    assert tail not in app.hub.observers

    assert app.node_queries["tail.want"]({"node": "other", "streams": [list(stream)]}) is True
    assert tail in app.hub.observers and list(tail.outboxes) == [stream]
    for i in range(3):
        app.hub.publish(tenant, key, Publication("realtime:room", "broadcast", orjson.dumps({"i": i})), app.now())
    outbox = tail.outboxes[stream]
    assert [orjson.loads(p.payload)["i"] for _, p, _ in outbox.items] == [1, 2]
    assert outbox.dropped == {False: 1, True: 0}  # bounded: the oldest made room

    relay.wanted_by({"node": "other", "streams": []})  # its last viewer closed
    assert tail not in app.hub.observers and not tail.outboxes

    relay.wanted_by({"node": "other", "streams": [list(stream)]})
    assert tail in app.hub.observers
    await asyncio.sleep(0.5)  # no announcement again (a node that died): forwarding expires
    assert tail not in app.hub.observers and not tail.outboxes
    relay.wanted_by({"node": app.node_id, "streams": [list(stream)]})  # its own: delivered directly
    assert tail not in app.hub.observers


async def test_a_clusters_viewer_shows_copies_from_other_nodes_once_with_their_nodes(monkeypatch):
    monkeypatch.setattr(tail_module, "GATHER", 0.1)
    app = make_app()
    tail = Tail(app.hub, max_viewers=2, buffer=10)
    viewer = tail.open(TENANT, "room", False, frozenset(Audience), node="a")
    events = viewer.events()
    assert await anext(events) == b": tailing realtime:room\n\n"
    hello = Publication("realtime:room", "broadcast", orjson.dumps({"n": 1}))
    copy = {"id": identity(hello), "kind": "broadcast", "private": False, "data": to_data(0.0, hello)}
    viewer.offer(0.0, hello, False)
    viewer.offer_remote("b", copy)
    viewer.offer(0.0, hello, False)  # sent twice on node a: two messages
    viewer.offer_remote("b", {**copy, "private": True})  # the private stream's: not this viewer's
    shown = [orjson.loads((await anext(events)).split(b"data: ")[1]) for _ in range(2)]
    assert [data["nodes"] for data in shown] == [["a", "b"], ["a"]]
    assert shown[0]["payload"] == {"n": 1}
    tail.close(TENANT, viewer)
