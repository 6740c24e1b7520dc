"""Broadcast from the database with unusual rows, end to end: binary payloads
(`realtime.send_binary`), payloads over the tenant limit, and rows that lack
what a broadcast needs (upstream replication_connection.ex drops those with
UnableToBroadcastChanges). Every negative check is closed by a marker message
sent after it: the marker's arrival proves the dropped row was not just late."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from conftest import MS, make_token
from jsclient import JsDriver, b64
from wire import V1, V2, Frame, Kind4, RawClient, metric, parse_kind4

pytestmark = pytest.mark.pg

BINARY_ENCODING = 0
JSON_ENCODING = 1
# Every byte value, a NUL first and invalid UTF-8 included.
DATA = bytes(range(256))


def db_broadcast_counter(http_url: str, name: str) -> float:
    return metric(http_url, f"realtime_db_broadcast_{name}_total")


def send_json(db: psycopg.Connection[Any], topic: str, event: str, payload: dict[str, Any]) -> None:
    db.execute("select realtime.send(%s::jsonb, %s, %s, false)", (json.dumps(payload), event, topic))


async def next_broadcast(client: RawClient) -> Frame | Kind4:
    frame = await client.expect(lambda f: isinstance(f, bytes) or (isinstance(f, Frame) and f.event == "broadcast"))
    return parse_kind4(frame) if isinstance(frame, bytes) else frame


@pytest.mark.js
async def test_send_binary_reaches_v2_and_realtime_js_as_bytes_and_is_skipped_for_v1(cdc, db, topic):
    token = make_token()
    wire_topic = f"realtime:{topic}"
    async with (
        await RawClient.open(cdc.socket_url(token, V2), V2) as v2,
        await RawClient.open(cdc.socket_url(token, V1), V1) as v1,
        JsDriver() as js,
    ):
        await v2.join(wire_topic)
        await v1.join(wire_topic)
        await js.join("js", cdc.ws_url, token, topic)
        mark = js.mark()
        db.execute("select realtime.send_binary(%s, 'bin', %s, false)", (DATA, topic))

        k4 = await next_broadcast(v2)
        assert isinstance(k4, Kind4)
        message_id = json.loads(k4.metadata)["id"]
        uuid.UUID(message_id)
        assert k4 == Kind4(
            wire_topic, "bin", json.dumps({"id": message_id}, separators=(",", ":")).encode(), BINARY_ENCODING, DATA
        )
        got = await js.wait_for(lambda e: e["ev"] == "broadcast" and e["channel"] == "js", 5_000 * MS, mark)
        assert got["payload"] == {
            "type": "broadcast",
            "event": "bin",
            "payload": {"binary_b64": b64(DATA), "class": "ArrayBuffer"},
            "meta": {"id": message_id},
        }

        # V1 cannot carry bytes: its first broadcast is the JSON one sent next.
        send_json(db, topic, "marker", {"n": 1})
        marker = await next_broadcast(v1)
        assert isinstance(marker, Frame) and marker.payload["event"] == "marker", marker
        k4 = await next_broadcast(v2)
        assert isinstance(k4, Kind4) and (k4.event, k4.encoding) == ("marker", JSON_ENCODING)
        assert json.loads(k4.payload)["n"] == 1


async def test_database_broadcasts_over_the_payload_limit_are_dropped_and_counted(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    async with await RawClient.open(srv.socket_url(make_token(), V2), V2) as client:
        await client.join(f"realtime:{topic}")
        before = db_broadcast_counter(srv.http_url, "dropped")
        with psycopg.connect(srv.database_url, autocommit=True) as db:
            send_json(db, topic, "big", {"blob": "x" * 2000})
            db.execute("select realtime.send_binary(%s, 'bigbin', %s, false)", (b"\x01" * 2000, topic))
            # Just under the limit (1 KiB, the JSON text as sent) still goes through.
            send_json(db, topic, "fits", {"blob": "y" * 900})
        k4 = await next_broadcast(client)
        assert isinstance(k4, Kind4) and k4.event == "fits", k4
        assert json.loads(k4.payload)["blob"] == "y" * 900
        assert db_broadcast_counter(srv.http_url, "dropped") == before + 2
        assert srv.log().count("UnableToBroadcastChanges: message") == 2, srv.log()


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        pytest.param("topic, extension, payload, private", "%s, 'broadcast', '{}', false", id="no event"),
        pytest.param("topic, extension, event, private", "%s, 'broadcast', 'e', false", id="no payload"),
        pytest.param("topic, extension, event, payload, private", "%s, 'broadcast', 'e', '{}', null", id="no private"),
    ],
)
async def test_database_broadcast_rows_lacking_required_fields_are_dropped_and_counted(cdc, db, topic, columns, values):
    async with await RawClient.open(cdc.socket_url(make_token(), V2), V2) as client:
        await client.join(f"realtime:{topic}")
        before = db_broadcast_counter(cdc.http_url, "dropped")
        log_lines = cdc.log().count("lacks required fields")
        db.execute(f"insert into realtime.messages ({columns}) values ({values})", (topic,))  # type: ignore[arg-type]
        send_json(db, topic, "marker", {})
        k4 = await next_broadcast(client)
        assert isinstance(k4, Kind4) and k4.event == "marker", k4
        assert db_broadcast_counter(cdc.http_url, "dropped") == before + 1
        assert cdc.log().count("lacks required fields") == log_lines + 1


async def test_a_database_broadcast_whose_event_v2_cannot_frame_still_reaches_v1(cdc, db, topic):
    # A kind-4 frame holds at most 255 bytes of event name (upstream raises too).
    long_event = "e" * 300
    token = make_token()
    async with (
        await RawClient.open(cdc.socket_url(token, V2), V2) as v2,
        await RawClient.open(cdc.socket_url(token, V1), V1) as v1,
    ):
        await v2.join(f"realtime:{topic}")
        await v1.join(f"realtime:{topic}")
        send_json(db, topic, long_event, {"n": 1})
        send_json(db, topic, "marker", {"n": 2})
        first = await next_broadcast(v1)
        assert isinstance(first, Frame) and first.payload["event"] == long_event
        assert first.payload["payload"]["n"] == 1
        k4 = await next_broadcast(v2)
        assert isinstance(k4, Kind4) and k4.event == "marker", k4
        assert (await v2.heartbeat()).status == "ok"
