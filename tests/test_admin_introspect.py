"""The admin API's live introspection and operator actions (realtime_core/admin/introspect.py)
against a running server carrying traffic from @supabase/realtime-js and the Python `realtime`
client: the figures reported are what the clients did, operator actions take effect and the
clients see upstream's texts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from conftest import JWT_SECRET, MS, admin_headers, make_token
from jsclient import JsDriver
from psycopg import sql
from psycopg.types.json import Jsonb
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_postgres_changes import new_table, run, subscribe
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wire import V2, RawClient, eventually

from realtime_core import __version__
from realtime_core.jwt import KeySet, verify
from realtime_core.plans import PLANS

pytestmark = [pytest.mark.js, pytest.mark.pg]

DELIVERY = 3_000 * MS
READ_ONLY = {"admin": "read"}
REALTIME_JS_VERSION = json.loads(
    (Path(__file__).parent / "js/node_modules/@supabase/realtime-js/package.json").read_text()
)["version"]


def get(server, path: str, **params: Any) -> httpx.Response:
    return httpx.get(server.http_url + path, params=params, headers=admin_headers(), timeout=10)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def tenant_id(server) -> str:
    tenants = ok(get(server, "/admin/v1/tenants"))["data"]
    assert len(tenants) == 1
    return tenants[0]["id"]


async def python_client(server, topic: str, key: str = "") -> tuple[AsyncRealtimeClient, Any]:
    client = AsyncRealtimeClient(server.ws_url, make_token(sub="py-user"), auto_reconnect=False)
    await client.connect()
    channel = client.channel(topic, {"config": {"broadcast": {"self": False}, "presence": {"key": key}}})
    states: list[Any] = []
    await channel.subscribe(lambda state, error: states.append(state))
    await eventually(lambda: RealtimeSubscribeStates.SUBSCRIBED in states, what="python client subscribed")
    return client, channel


async def test_node_reports_this_process(server):
    await eventually(
        lambda: ok(get(server, "/admin/v1/node"))["event_loop_lag_ms"]["p50"] is not None,
        timeout=DELIVERY,
        what="a loop lag sample",
    )
    node = ok(get(server, "/admin/v1/node"))
    assert node["version"] == __version__
    assert node["pid"] == server.proc.pid
    assert node["uptime_ms"] > 0
    assert node["rss_bytes"] > 10 * 1024 * 1024
    assert node["cpu"]["user_seconds"] > 0
    assert node["open_fds"] > 0
    assert node["event_loop_lag_ms"]["p99"] >= node["event_loop_lag_ms"]["p50"] >= 0
    assert node["background_tasks"]["by_name"]["event-loop"] == 1
    assert node["started_at"].endswith("Z")


async def test_tenant_and_connections_report_what_the_clients_did(server, topic):
    tenant = tenant_id(server)
    async with JsDriver() as js:
        # realtime-js tells who it is only if asked to: X-Client-Info as a connect parameter.
        info = f"realtime-js/{REALTIME_JS_VERSION}"
        await js.request(
            {
                "op": "client",
                "name": "alice",
                "url": server.ws_url,
                "params": {"apikey": make_token(sub="alice-sub"), "X-Client-Info": info},
                "options": {},
            }
        )
        await js.channel("alice", "alice", topic, presence={"key": "alice"})
        await js.on("alice", "broadcast", event="*")
        await js.on("alice", "presence", event="*")
        await js.subscribed("alice")
        await js.join("bare", server.ws_url, make_token(sub="bare"), f"{topic}-other")
        assert await js.request({"op": "track", "channel": "alice", "payload": {"status": "online"}}) == "ok"
        client, channel = await python_client(server, topic, key="py")
        try:
            for i in range(3):
                await channel.send_broadcast("note", {"i": i})
            await js.wait_for(
                lambda ev: ev["ev"] == "broadcast" and ev["payload"]["payload"] == {"i": 2}, timeout=DELIVERY
            )

            view = ok(get(server, f"/admin/v1/tenants/{tenant}"))
            assert view["counts"] == {
                "connections": 3,
                "users": 3,
                "channels": 3,
                "streams": 2,
                "presence_keys": 1,
                "services_running": True,
                "replication_connected": view["counts"]["replication_connected"],
            }
            assert view["settings"]["jwt"] == {"hs_secret": True, "jwks_keys": 0}
            assert JWT_SECRET not in json.dumps(view)
            assert set(view["limits"]) == {"effective", "explicit"}
            assert view["plan"]["name"]
            assert view["plan"]["included_egress_bytes"] == PLANS[view["plan"]["name"]].included_egress_bytes
            # The quota status is the bill's: one source (usage.py), the live counts included.
            bill = ok(get(server, f"/admin/v1/tenants/{tenant}/bill"))
            assert view["quota"]["peak_connections"] == bill["quota"]["peak_connections"]
            assert view["quota"]["peak_connections"]["used"] >= 3
            assert view["quota"]["messages"]["used"] > 0
            assert bill["quota"]["egress"]["included"] == view["plan"]["included_egress_bytes"]

            rows = ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"]
            by_library = {row["client_library"]: row for row in rows}
            js_row, py_row = by_library["realtime-js"], by_library["websockets"]
            # realtime-js with only an apikey tells nothing: Node's `ws` sends no User-Agent.
            bare = next(row for row in rows if row["sub"] == "bare")
            assert (bare["client_library"], bare["client_version"]) == (None, None)
            rows = [js_row, py_row]
            assert js_row["client_version"] == REALTIME_JS_VERSION
            assert (js_row["vsn"], py_row["vsn"]) == ("2.0.0", "1.0.0")
            assert "Python" in py_row["user_agent"]
            assert (js_row["sub"], py_row["sub"]) == ("alice-sub", "py-user")
            assert js_row["role"] == py_row["role"] == "anon"
            assert js_row["topics"] == py_row["topics"] == [{"topic": topic, "private": False}]
            # The Python client sent a join and 3 broadcasts; alice got those 3 broadcasts.
            assert py_row["messages_in"] >= 4
            assert js_row["messages_out"] >= 3 + 2  # join reply, presence_state and the broadcasts
            for row in rows:
                assert row["bytes_in"] > 0 and row["bytes_out"] > 0
                assert row["write_backlog_bytes"] >= 0
                assert row["remote_address"].startswith("127.0.0.1:")
                assert row["connected_at"].endswith("Z") and len(row["id"]) == 12

            by_sent = ok(get(server, f"/admin/v1/tenants/{tenant}/connections", sort="-messages_in", limit=1))
            assert by_sent["data"][0]["id"] == py_row["id"] and by_sent["next_cursor"]

            presence = ok(get(server, f"/admin/v1/tenants/{tenant}/channels/{quote(topic)}/presence"))
            state = await js.request({"op": "presenceState", "channel": "alice"})
            assert presence["data"] == state
            assert [m["status"] for m in presence["data"]["alice"]] == ["online"]
        finally:
            await client.close()


async def test_delete_connection_disconnects_with_upstreams_texts(server, topic):
    tenant = tenant_id(server)
    async with JsDriver() as js:
        await js.join("alice", server.ws_url, make_token(sub="alice"), topic, listen=("broadcast", "system"))
        await js.join("bob", server.ws_url, make_token(sub="bob"), topic)
        rows = ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"]
        assert len(rows) == 2
        alice = next(r for r in rows if r["sub"] == "alice")
        start = js.mark()
        response = httpx.delete(
            f"{server.http_url}/admin/v1/tenants/{tenant}/connections/{alice['id']}",
            headers=admin_headers(),
            timeout=10,
        )
        [node] = ok(get(server, "/admin/v1/nodes"))["data"]
        assert ok(response) == {
            "id": alice["id"],
            "close_code": 1012,
            "message": "Server requested disconnect",
            "node": node["id"],  # the node it was on: this process
        }
        closed = await js.wait_for(
            lambda ev: ev["ev"] == "socket" and ev["state"] == "close" and ev["client"] == "alice", since=start
        )
        assert closed.get("code") == 1012
        assert not js.matching(lambda ev: ev["ev"] == "socket" and ev["client"] == "bob", since=start)
        system = [ev for ev in js.events[start:] if ev["ev"] == "system"]
        assert [ev["payload"]["message"] for ev in system] == ["Server requested disconnect"]
        await eventually(
            lambda: len(ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"]) <= 1,
            what="the connection gone",
        )
        assert alice["id"] not in [r["id"] for r in ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"]]


async def test_test_broadcast_reaches_the_subscribers(server, topic):
    tenant = tenant_id(server)
    async with JsDriver() as js:
        await js.join("alice", server.ws_url, make_token(), topic)
        await js.join("bob", server.ws_url, make_token(), topic)
        response = httpx.post(
            f"{server.http_url}/admin/v1/tenants/{tenant}/broadcast",
            json={"topic": topic, "event": "hello", "payload": {"from": "operator"}},
            headers=admin_headers(),
            timeout=10,
        )
        assert ok(response) == {"delivered": 2}
        for name in ("alice", "bob"):
            got = await js.wait_for(lambda ev, n=name: ev["ev"] == "broadcast" and ev["channel"] == n)
            assert (got["payload"]["event"], got["payload"]["payload"]) == ("hello", {"from": "operator"})
    bad = httpx.post(
        f"{server.http_url}/admin/v1/tenants/{tenant}/broadcast",
        json={"topic": topic, "event": "hello", "payload": [1]},
        headers=admin_headers(),
        timeout=10,
    )
    assert bad.status_code == 422 and "payload" in bad.json()["errors"]


async def test_tokens_are_signed_with_the_tenants_secret_and_let_clients_join(server, topic):
    tenant = tenant_id(server)
    response = httpx.post(
        f"{server.http_url}/admin/v1/tenants/{tenant}/tokens",
        json={"role": "authenticated", "sub": "tester", "claims": {"team": "a"}, "ttl_seconds": 600},
        headers=admin_headers(),
        timeout=10,
    )
    token = ok(response)["token"]
    claims = verify(token, KeySet(secret=JWT_SECRET), now=time.time())
    assert (claims["role"], claims["sub"], claims["team"]) == ("authenticated", "tester", "a")
    assert claims["exp"] - claims["iat"] == 600
    async with JsDriver() as js:
        await js.join("alice", server.ws_url, token, topic)
    audit = ok(get(server, "/admin/v1/audit"))["data"]
    entry = next(e for e in audit if e["action"] == "tenant.token")
    assert token not in json.dumps(audit) and entry["detail"]["sub"] == "tester"


async def test_errors_record_refused_connects_and_joins(server):
    tenant = tenant_id(server)
    expired = make_token(exp_in=-10)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.socket_url(expired, "2.0.0")):
            pass
    assert refused.value.response.status_code == 401
    async with JsDriver() as js:
        await js.client("c", server.ws_url, make_token())
        await js.channel("c", "c", "")  # realtime: with nothing after it
        status = await js.subscribe("c")
        assert status["status"] == "CHANNEL_ERROR"
    errors = ok(get(server, f"/admin/v1/tenants/{tenant}/errors"))
    codes = [e["code"] for e in errors["data"]]
    assert codes[:2] == ["TopicNameRequired", "InvalidJWTToken"]  # newest first
    assert errors["counts"]["TopicNameRequired"] == 1 and errors["counts"]["InvalidJWTToken"] == 1
    assert sum(m["counts"].get("TopicNameRequired", 0) for m in errors["per_minute"]) == 1
    assert errors["data"][0]["topic"] == "realtime:" and len(errors["data"][0]["connection"]) == 12


async def test_read_only_tokens_may_read_not_act(server, topic):
    tenant = tenant_id(server)
    headers = admin_headers(**READ_ONLY)
    assert httpx.get(f"{server.http_url}/admin/v1/node", headers=headers).status_code == 200
    for path, body in (
        ("broadcast", {"topic": topic, "event": "e", "payload": {}}),
        ("tokens", {"role": "authenticated"}),
    ):
        response = httpx.post(f"{server.http_url}/admin/v1/tenants/{tenant}/{path}", json=body, headers=headers)
        assert (response.status_code, response.content) == (403, b"")
    deleted = httpx.delete(f"{server.http_url}/admin/v1/tenants/{tenant}/connections/whatever", headers=headers)
    assert deleted.status_code == 403
    assert httpx.get(f"{server.http_url}/admin/v1/node").status_code == 403


async def test_unknown_tenant_connection_and_topic_answer_404(server, topic):
    tenant = tenant_id(server)
    for path in (
        "/admin/v1/tenants/nope",
        "/admin/v1/tenants/nope/connections",
        "/admin/v1/tenants/nope/errors",
        f"/admin/v1/tenants/{tenant}/channels/{topic}/presence",
    ):
        response = get(server, path)
        assert (response.status_code, response.json()) == (404, {"message": "not found"}), path
    gone = httpx.delete(
        f"{server.http_url}/admin/v1/tenants/{tenant}/connections/nope", headers=admin_headers(), timeout=10
    )
    assert gone.status_code == 404


def test_tokens_are_refused_for_a_tenant_with_only_jwks_keys(server_factory):
    first = server_factory()
    first.stop()
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "n": "sXch", "e": "AQAB"}]}
    with psycopg.connect(first.database_url, autocommit=True) as db:
        db.execute(
            "insert into _realtime.tenants (external_id, name, jwt_jwks) values ('jwks-only', 'jwks-only', %s)",
            [Jsonb(jwks)],
        )
    server = server_factory(database_url=first.database_url)
    view = ok(get(server, "/admin/v1/tenants/jwks-only"))
    assert view["settings"]["jwt"] == {"hs_secret": False, "jwks_keys": 1}
    response = httpx.post(
        f"{server.http_url}/admin/v1/tenants/jwks-only/tokens", json={"sub": "x"}, headers=admin_headers(), timeout=10
    )
    assert response.status_code == 422
    assert "only JWKS keys" in response.json()["errors"]["tenant"][0]
    bad = httpx.post(
        f"{server.http_url}/admin/v1/tenants/jwks-only/tokens", json={"ttl_seconds": 0}, headers=admin_headers()
    )
    assert bad.status_code == 422 and "ttl_seconds" in bad.json()["errors"]


async def test_errors_record_channel_shutdowns_with_upstreams_codes(server_factory, topic):
    server = server_factory({"CLIENT_PRESENCE_MAX_CALLS": "1"})
    tenant = tenant_id(server)
    async with JsDriver() as js:
        await js.join("alice", server.ws_url, make_token(), topic, listen=("presence", "system"), presence={"key": "a"})
        start = js.mark()
        await js.request({"op": "track", "channel": "alice", "payload": {"n": 1}})
        await js.request({"op": "track", "channel": "alice", "payload": {"n": 2}})
        system = await js.wait_for(lambda ev: ev["ev"] == "system", since=start, timeout=DELIVERY)
        assert system["payload"]["message"] == "Client presence rate limit exceeded"
    errors = ok(get(server, f"/admin/v1/tenants/{tenant}/errors"))
    assert [(e["code"], e["reason"], e["topic"]) for e in errors["data"]] == [
        ("ClientPresenceRateLimitReached", "Client presence rate limit exceeded", topic)
    ]


async def test_x_client_info_header_names_the_client(server):
    tenant = tenant_id(server)
    async with connect(
        server.socket_url(make_token(), "2.0.0"), additional_headers={"X-Client-Info": "supabase-py/2.9.0"}
    ):
        rows = ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"]
    assert [(r["client_library"], r["client_version"], r["client_info"]) for r in rows] == [
        ("supabase-py", "2.9.0", "supabase-py/2.9.0")
    ]


async def test_a_slow_consumer_is_recorded_with_its_connection(server_factory, topic):
    server = server_factory({"REALTIME_MAX_WRITE_BUFFER_BYTES": str(64 * 1024)})
    tenant = tenant_id(server)
    # max_queue=1: the client library stops reading once one message waits, as a stuck client would.
    async with connect(server.socket_url(make_token(), "1.0.0"), max_queue=1) as ws:
        await ws.send(json.dumps({"topic": f"realtime:{topic}", "event": "phx_join", "payload": {}, "ref": "1"}))
        await eventually(
            lambda: ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"][0]["channels"] == 1,
            what="joined",
        )
        conn = ok(get(server, f"/admin/v1/tenants/{tenant}/connections"))["data"][0]["id"]
        payload = {"blob": "x" * 100_000}
        for _ in range(500):  # 50 MB at most: far more than the kernel's buffers and the limit
            response = httpx.post(
                f"{server.http_url}/admin/v1/tenants/{tenant}/broadcast",
                json={"topic": topic, "event": "big", "payload": payload},
                headers=admin_headers(),
                timeout=10,
            )
            if ok(response)["delivered"] == 0:
                break
        else:
            pytest.fail("the client that did not read was never dropped")
    await eventually(
        lambda: any(e["code"] == "SlowConsumer" for e in ok(get(server, f"/admin/v1/tenants/{tenant}/errors"))["data"]),
        what="the slow consumer recorded",
    )
    errors = ok(get(server, f"/admin/v1/tenants/{tenant}/errors"))
    slow = next(e for e in errors["data"] if e["code"] == "SlowConsumer")
    assert slow["connection"] == conn and errors["counts"]["SlowConsumer"] == 1


def rls_errors(server, tenant: str) -> list[dict[str, Any]]:
    return [e for e in ok(get(server, f"/admin/v1/tenants/{tenant}/errors"))["data"] if e["code"] == "RlsPolicyError"]


async def test_errors_record_a_raising_rls_policy_of_postgres_changes(cdc, db):
    table = new_table(db, "id int primary key, owner text")
    db.execute(sql.SQL("alter table {} enable row level security").format(sql.Identifier(table)))
    db.execute(
        sql.SQL("create policy boom on {} for select to authenticated using ((id / (id - id)) = 1)").format(
            sql.Identifier(table)
        )
    )
    tenant = tenant_id(cdc)
    mallory = make_token("authenticated", sub="mallory")
    async with await RawClient.open(cdc.socket_url(mallory, V2)) as client:
        await subscribe(client, "boom", [{"event": "INSERT", "schema": "public", "table": table}], token=mallory)
        run(db, "insert into {t} values (1, 'mallory')", table)
        await eventually(
            lambda: any(
                e["code"] == "RlsPolicyError" for e in ok(get(cdc, f"/admin/v1/tenants/{tenant}/errors"))["data"]
            ),
            timeout=DELIVERY,
            what="the RLS error recorded",
        )
    error = next(e for e in ok(get(cdc, f"/admin/v1/tenants/{tenant}/errors"))["data"] if e["code"] == "RlsPolicyError")
    assert error["topic"] == f"public.{table}" and "division by zero" in error["reason"]
