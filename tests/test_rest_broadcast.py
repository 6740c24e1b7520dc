"""The REST broadcast API end to end (docs/protocol.md §4.2, §4.3, §9.4): HTTP in, socket frames out.

Requests go through httpx to `realtime-core serve`; subscribers are raw
wire.RawClient sockets, so deliveries are checked frame by frame in both
serializer versions."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest
from conftest import BUCKET_WAIT, make_token
from wire import V1, V2, Frame, RawClient, parse_kind4

pytestmark = pytest.mark.pg

PREFIXES = pytest.mark.parametrize("prefix", ["", "/realtime/v1"], ids=["api", "realtime-v1"])
UNAUTHORIZED = {"message": "Unauthorized"}


def rt(topic: str) -> str:
    return f"realtime:{topic}"


def auth(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}


async def subscriber(server, topic: str, vsn: str = V2, private: bool = False) -> RawClient:
    client = await RawClient.open(server.socket_url(make_token(), vsn), vsn)
    await client.join(rt(topic), {"private": private} if private else None)
    return client


async def post(server, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        return await http.post(path, **kwargs)


async def rest_marker(server, topic: str, client: RawClient) -> None:
    """Publish a REST broadcast "marker" on `topic`; `client` must get it with nothing before.
    The REST endpoints publish before they answer, so anything an earlier request wrongly
    delivered is queued ahead of it."""
    body = {"messages": [{"topic": topic, "event": "marker", "payload": {}}]}
    assert (await post(server, "/api/broadcast", json=body, headers=auth())).status_code == 202
    await client.expect_nothing_before(lambda f: isinstance(f, Frame) and f.payload.get("event") == "marker")


def single_path(prefix: str, topic: str, event: str) -> str:
    return f"{prefix}/api/broadcast/{quote(topic, safe='')}/events/{quote(event, safe='')}"


# -- batch endpoint (docs/protocol.md §4.2) ---------------------------------------------------------


@PREFIXES
async def test_batch_broadcast_is_accepted_and_delivered_to_subscribers_of_both_versions(server, topic, prefix):
    v2 = await subscriber(server, topic, V2)
    v1 = await subscriber(server, topic, V1)
    async with v2, v1:
        body = {"messages": [{"topic": topic, "event": "greet", "payload": {"hello": "world"}}]}
        response = await post(server, f"{prefix}/api/broadcast", json=body, headers=auth())
        assert response.status_code == 202
        assert response.content == b""

        expected = {"payload": {"hello": "world"}, "event": "greet", "type": "broadcast"}
        frame = await v2.recv()
        assert frame.raw == [None, None, rt(topic), "broadcast", expected]
        frame = await v1.recv()
        assert frame.raw == {"topic": rt(topic), "event": "broadcast", "payload": expected, "ref": None}


async def test_batch_message_with_an_id_is_delivered_with_meta_id(server, topic):
    async with await subscriber(server, topic) as client:
        body = {"messages": [{"topic": topic, "event": "e", "payload": {"n": 1}, "id": "msg-1"}]}
        assert (await post(server, "/api/broadcast", json=body, headers=auth())).status_code == 202
        assert (await client.recv()).payload == {
            "payload": {"n": 1},
            "event": "e",
            "type": "broadcast",
            "meta": {"id": "msg-1"},
        }


async def test_batch_delivers_every_message_in_order_to_its_own_topic(server, topic):
    a = await subscriber(server, topic + "-a")
    b = await subscriber(server, topic + "-b")
    async with a, b:
        messages = [
            {"topic": topic + "-a", "event": "one", "payload": {}},
            {"topic": topic + "-b", "event": "two", "payload": {}},
            {"topic": topic + "-a", "event": "three", "payload": {}},
        ]
        assert (await post(server, "/api/broadcast", json={"messages": messages}, headers=auth())).status_code == 202
        assert [(await a.recv()).payload["event"] for _ in range(2)] == ["one", "three"]
        assert (await b.recv()).payload["event"] == "two"
        await rest_marker(server, topic + "-a", a)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer not-a-jwt"}, id="malformed"),
        pytest.param(auth(make_token(secret="other-secret-" + "q" * 32)), id="bad-signature"),
        pytest.param(auth(make_token(exp_in=-10)), id="expired"),
        pytest.param(auth(make_token(role=None)), id="no-role"),
        pytest.param({"apikey": "not-a-jwt"}, id="bad-apikey"),
        pytest.param({"Authorization": f"Basic {make_token()}"}, id="not-bearer"),
    ],
)
async def test_batch_without_a_valid_token_is_401_unauthorized(server, topic, headers):
    async with await subscriber(server, topic) as client:
        body = {"messages": [{"topic": topic, "event": "e", "payload": {}}]}
        response = await post(server, "/api/broadcast", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
        await rest_marker(server, topic, client)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_bearer_scheme_is_matched_case_insensitively(server, topic, scheme):
    async with await subscriber(server, topic) as client:
        body = {"messages": [{"topic": topic, "event": "e", "payload": {}}]}
        response = await post(
            server, "/api/broadcast", json=body, headers={"Authorization": f"{scheme} {make_token()}"}
        )
        assert response.status_code == 202
        assert (await client.recv()).event == "broadcast"


async def test_apikey_header_authenticates_without_authorization(server, topic):
    async with await subscriber(server, topic) as client:
        body = {"messages": [{"topic": topic, "event": "e", "payload": {}}]}
        response = await post(server, "/api/broadcast", json=body, headers={"apikey": make_token()})
        assert response.status_code == 202
        assert (await client.recv()).event == "broadcast"


@pytest.mark.parametrize(
    ("message", "errors"),
    [
        pytest.param({"event": "e", "payload": {}}, {"topic": ["can't be blank"]}, id="no-topic"),
        pytest.param({"topic": "t", "payload": {}}, {"event": ["can't be blank"]}, id="no-event"),
        pytest.param({"topic": "t", "event": "e"}, {"payload": ["can't be blank"]}, id="no-payload"),
        pytest.param({"topic": "t", "event": "e", "payload": [1, 2]}, {"payload": ["is invalid"]}, id="list-payload"),
        pytest.param({"topic": "t", "event": "e", "payload": "text"}, {"payload": ["is invalid"]}, id="string-payload"),
        pytest.param(
            {"payload": {}},
            {"topic": ["can't be blank"], "event": ["can't be blank"]},
            id="no-topic-no-event",
        ),
    ],
)
async def test_batch_with_an_invalid_message_is_422_with_ecto_errors(server, message, errors):
    response = await post(server, "/api/broadcast", json={"messages": [message]}, headers=auth())
    assert response.status_code == 422
    assert response.json() == {"errors": {"messages": [errors]}}


async def test_batch_with_one_invalid_message_delivers_nothing(server, topic):
    async with await subscriber(server, topic) as client:
        messages = [
            {"topic": topic, "event": "fine", "payload": {}},
            {"topic": topic, "event": "broken"},
        ]
        response = await post(server, "/api/broadcast", json={"messages": messages}, headers=auth())
        assert response.status_code == 422
        assert response.json() == {"errors": {"messages": [{}, {"payload": ["can't be blank"]}]}}
        await rest_marker(server, topic, client)


async def test_batch_payload_over_the_tenant_limit_is_422(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    async with await subscriber(srv, topic) as client:
        messages = [{"topic": topic, "event": "e", "payload": {"blob": "x" * 2000}}]
        response = await post(srv, "/api/broadcast", json={"messages": messages}, headers=auth())
        assert response.status_code == 422
        assert response.json() == {"errors": {"messages": [{"payload": ["Payload size exceeds tenant limit"]}]}}
        # Under the limit it goes through: the client's next frame (a marker).
        messages = [{"topic": topic, "event": "e", "payload": {"blob": "x" * 500}}]
        assert (await post(srv, "/api/broadcast", json={"messages": messages}, headers=auth())).status_code == 202
        assert (await client.recv()).payload["payload"] == {"blob": "x" * 500}


async def test_batch_sent_with_chunked_transfer_encoding_is_accepted(server, topic):
    async with await subscriber(server, topic) as client:
        body = json.dumps({"messages": [{"topic": topic, "event": "chunked", "payload": {"n": 1}}]}).encode()

        async def chunks():
            for i in range(0, len(body), 7):
                yield body[i : i + 7]

        response = await post(
            server, "/api/broadcast", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
        )
        assert response.status_code == 202
        assert (await client.recv()).payload["event"] == "chunked"


async def test_several_requests_share_one_keep_alive_connection(server, topic):
    async with await subscriber(server, topic) as client, httpx.AsyncClient(base_url=server.http_url) as http:
        for n in range(3):
            body = {"messages": [{"topic": topic, "event": "e", "payload": {"n": n}}]}
            assert (await http.post("/api/broadcast", json=body, headers=auth())).status_code == 202
            assert (await http.get("/api/ping")).json() == {"message": "Success"}
        assert [(await client.recv()).payload["payload"]["n"] for _ in range(3)] == [0, 1, 2]


async def test_batch_without_messages_is_422(server):
    response = await post(server, "/api/broadcast", json={}, headers=auth())
    assert response.status_code == 422
    assert "messages" in response.json()["errors"]


async def test_private_batch_message_is_dropped_silently_with_202(server, topic):
    async with await subscriber(server, topic) as public:
        messages = [{"topic": topic, "event": "secret", "payload": {}, "private": True}]
        response = await post(server, "/api/broadcast", json={"messages": messages}, headers=auth())
        assert response.status_code == 202
        await rest_marker(server, topic, public)


async def test_batch_with_malformed_json_is_400(server):
    response = await post(
        server, "/api/broadcast", content=b'{"messages": [', headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400


async def test_broadcast_responses_carry_rate_limit_headers(server):
    body = {"messages": [{"topic": "rate-headers", "event": "e", "payload": {}}]}
    response = await post(server, "/api/broadcast", json=body, headers=auth())
    assert response.status_code == 202
    for name in ("x-rate-rolling", "x-rate-limit", "x-rate-limit-remaining"):
        assert name in response.headers
        float(response.headers[name])  # a number
    assert float(response.headers["x-rate-limit-remaining"]) <= float(response.headers["x-rate-limit"])


async def test_batch_larger_than_the_events_per_second_limit_is_429(server_factory, topic):
    srv = server_factory({"TENANT_MAX_EVENTS_PER_SECOND": "1"})
    async with await subscriber(srv, topic) as client:
        messages = [{"topic": topic, "event": "e", "payload": {}} for _ in range(2)]
        response = await post(srv, "/api/broadcast", json={"messages": messages}, headers=auth())
        assert response.status_code == 429
        assert response.json() == {"message": "Too many messages to broadcast, please reduce the batch size"}
        await rest_marker(srv, topic, client)


@pytest.mark.slow
async def test_broadcast_while_over_the_events_per_second_limit_is_429(server_factory, topic):
    """Rate counters average 5 s buckets (docs/protocol.md §9.2), so this waits one bucket."""
    srv = server_factory({"TENANT_MAX_EVENTS_PER_SECOND": "1"})
    async with await subscriber(srv, topic) as client:
        for i in range(10):  # 10 socket broadcasts (no other receiver): 2 events/s once the bucket closes
            await client.push(rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {"i": i}})
        await asyncio.sleep(BUCKET_WAIT)
        one = {"messages": [{"topic": topic + "-other", "event": "e", "payload": {}}]}
        response = await post(srv, "/api/broadcast", json=one, headers=auth())
        assert response.status_code == 429
        assert response.json() == {"message": "You have exceeded your rate limit"}
        response = await post(
            srv,
            single_path("", topic + "-other", "e"),
            content=b"{}",
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 429
        assert response.json() == {"message": "You have exceeded your rate limit"}


async def test_broadcast_responses_allow_any_origin(server):
    body = {"messages": [{"topic": "cors", "event": "e", "payload": {}}]}
    response = await post(server, "/api/broadcast", json=body, headers={**auth(), "Origin": "https://example.com"})
    assert response.headers["access-control-allow-origin"] == "*"
    unauthorized = await post(server, "/api/broadcast", json=body)
    assert unauthorized.headers["access-control-allow-origin"] == "*"


@PREFIXES
async def test_options_preflight_allows_the_headers_clients_send(server, prefix):
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for path in (f"{prefix}/api/broadcast", single_path(prefix, "room", "e")):
            response = await http.options(
                path,
                headers={
                    "Origin": "https://example.com",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, apikey, content-type",
                },
            )
            assert 200 <= response.status_code < 300
            assert response.headers["access-control-allow-origin"] == "*"
            assert "POST" in response.headers["access-control-allow-methods"]
            allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "apikey", "content-type"} <= allowed


# -- single-event endpoint (docs/protocol.md §4.3) --------------------------------------------------


@PREFIXES
async def test_single_json_event_reaches_v2_as_kind4_and_v1_as_json(server, topic, prefix):
    v2 = await subscriber(server, topic, V2)
    v1 = await subscriber(server, topic, V1)
    async with v2, v1:
        response = await post(
            server,
            single_path(prefix, topic, "new-msg"),
            content=b'{"text": "hi"}',
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 202

        frame = parse_kind4(await v2.recv())
        assert (frame.topic, frame.event, frame.metadata, frame.encoding) == (rt(topic), "new-msg", b"", 1)
        assert json.loads(frame.payload) == {"text": "hi"}

        assert (await v1.recv()).raw == {
            "topic": rt(topic),
            "event": "broadcast",
            "payload": {"event": "new-msg", "payload": {"text": "hi"}, "type": "broadcast"},
            "ref": None,
        }


async def test_single_octet_stream_event_reaches_v2_as_binary_and_not_v1(server, topic):
    v2 = await subscriber(server, topic, V2)
    v1 = await subscriber(server, topic, V1)
    async with v2, v1:
        body = bytes(range(256)) * 4
        response = await post(
            server,
            single_path("", topic, "blob"),
            content=body,
            headers={**auth(), "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 202
        frame = parse_kind4(await v2.recv())
        assert (frame.topic, frame.event, frame.metadata, frame.encoding, frame.payload) == (
            rt(topic),
            "blob",
            b"",
            0,
            body,
        )
        await rest_marker(server, topic, v1)


async def test_single_event_content_type_parameters_are_allowed(server, topic):
    async with await subscriber(server, topic, V1) as v1:
        response = await post(
            server,
            single_path("", topic, "e"),
            content=b'{"a": 1}',
            headers={**auth(), "Content-Type": "application/json; charset=utf-8"},
        )
        assert response.status_code == 202
        assert (await v1.recv()).payload == {"event": "e", "payload": {"a": 1}, "type": "broadcast"}


async def test_single_event_topic_and_event_are_url_decoded(server):
    topic = "room:42 lobby"
    async with await subscriber(server, topic, V1) as v1:
        response = await post(
            server,
            single_path("", topic, "a b"),
            content=b"{}",
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 202
        frame = await v1.recv()
        assert (frame.topic, frame.payload["event"]) == (rt(topic), "a b")


async def test_single_event_with_text_plain_is_415(server, topic):
    async with await subscriber(server, topic) as client:
        response = await post(
            server, single_path("", topic, "e"), content=b"hello", headers={**auth(), "Content-Type": "text/plain"}
        )
        assert response.status_code == 415
        assert response.json() == {"error": "Unsupported Media Type. Use application/json or application/octet-stream"}
        await rest_marker(server, topic, client)


async def test_single_private_event_without_write_permission_is_403(server, topic):
    async with await subscriber(server, topic) as client:
        response = await post(
            server,
            single_path("", topic, "e") + "?private=true",
            content=b"{}",
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 403
        assert response.json() == UNAUTHORIZED
        await rest_marker(server, topic, client)


async def test_single_event_without_a_token_is_401(server, topic):
    response = await post(
        server, single_path("", topic, "e"), content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


async def test_single_event_with_malformed_json_is_400(server, topic):
    async with await subscriber(server, topic) as client:
        response = await post(
            server,
            single_path("", topic, "e"),
            content=b"{nope",
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 400
        await rest_marker(server, topic, client)


async def test_single_event_payload_over_the_tenant_limit_is_422(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    async with await subscriber(srv, topic) as client:
        response = await post(
            srv,
            single_path("", topic, "e"),
            content=b"\x00" * 2000,
            headers={**auth(), "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 422
        await rest_marker(srv, topic, client)


# -- routing and health (docs/protocol.md §9.4) -----------------------------------------------------


async def test_wrong_method_on_a_broadcast_route_is_405(server):
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/api/broadcast", headers=auth())).status_code == 405
        assert (await http.put("/api/broadcast", headers=auth(), json={})).status_code == 405
        assert (await http.get(single_path("", "room", "e"), headers=auth())).status_code == 405


async def test_unknown_path_is_404(server):
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.post("/api/broadcasts", headers=auth(), json={})).status_code == 404
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/api/broadcast/room/events", headers=auth(), json={})).status_code == 404


async def test_healthcheck_answers_ok(server):
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/healthcheck")
        assert response.status_code == 200
        assert response.text == "ok"


@PREFIXES
async def test_ping_answers_success(server, prefix):
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get(f"{prefix}/api/ping")
        assert response.status_code == 200
        assert response.json() == {"message": "Success"}
