"""The tenant API (`/api/tenants`, realtime_core/admin/tenant_api.py) and the admin settings
endpoint, against a running server: who may call each route, what a bad body gets (and that it
changes nothing), upstream's upsert semantics and statuses, the tenant's own database made
ready and torn down, secrets kept out of the database, the answers and the log, and the
audit log of every write."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import websockets
from conftest import (
    MS,
    ServerProcess,
    admin_headers,
    admin_token,
    make_token,
    scratch_database,
    serving,
)
from psycopg.conninfo import conninfo_to_dict
from test_tenant_services import cdc_rls

from realtime_core.secret_box import PREFIX

pytestmark = pytest.mark.pg

NEXT_SECRET = "next-admin-secret-" + "n" * 32
BLOCKED = admin_token(sub="leaked-operator")
SECRET = "tenant-api-secret-" + "s" * 40  # every tenant's jwt_secret here: looked for everywhere
PASSWORD = "db-password-" + "p" * 30  # every extension's db_password here
ENV = {
    "API_JWT_SECRET_NEXT": NEXT_SECRET,
    "API_TOKEN_BLOCKLIST": BLOCKED,
    "LOG_LEVEL": "debug",
    "REALTIME_POSTGRES_CHANGES": "false",
}
TIMEOUT = 30_000 * MS


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServerProcess]:
    with serving(pg_dsn, ENV) as srv:
        yield srv
        log = srv.log()
        assert SECRET not in log and PASSWORD not in log


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {admin_token()}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=TIMEOUT) as client:
        yield client


def tenant(external_id: str, **fields: Any) -> dict[str, Any]:
    return {"tenant": {"external_id": external_id, "jwt_secret": SECRET, **fields}}


def no_secret(response: httpx.Response) -> httpx.Response:
    """`response`, after checking that no secret is in it."""
    assert SECRET not in response.text and PASSWORD not in response.text, response.text
    return response


def raw_row(server: ServerProcess, external_id: str) -> dict[str, Any] | None:
    with psycopg.connect(server.database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("select * from _realtime.tenants where external_id = %s", (external_id,))
        return cur.fetchone()


def rest_broadcast(server: ServerProcess, external_id: str) -> httpx.Response:
    """A REST broadcast to tenant `external_id` (through its Host), signed with SECRET."""
    return httpx.post(
        f"{server.http_url}/api/broadcast",
        json={"messages": [{"topic": "room", "event": "e", "payload": {}}]},
        headers={"host": f"{external_id}.localhost", "authorization": f"Bearer {make_token(secret=SECRET)}"},
        timeout=TIMEOUT,
    )


def fresh_id() -> str:
    return "t" + secrets.token_hex(5)


# Authentication

ROUTES = [
    ("GET", "/api/tenants", None),
    ("POST", "/api/tenants", tenant("authcheck")),
    ("GET", "/api/tenants/authcheck", None),
    ("PUT", "/api/tenants/authcheck", tenant("authcheck")),
    ("PATCH", "/api/tenants/authcheck", tenant("authcheck")),
    ("DELETE", "/api/tenants/authcheck", None),
    ("POST", "/api/tenants/authcheck/reload", None),
    ("POST", "/api/tenants/authcheck/shutdown", None),
    ("GET", "/api/tenants/authcheck/health", None),
    ("PATCH", "/admin/v1/tenants/authcheck/settings", {"suspend": False}),
    ("GET", "/api/openapi", None),
]
BAD_TOKENS = {
    "no token": None,
    "wrong secret": admin_token(secret="not-the-admin-secret-" + "w" * 32),
    "anon role": admin_token(role="anon"),
    "authenticated role": admin_token(role="authenticated"),
    "blocklisted": BLOCKED,
    "a tenant's client token": make_token("service_role"),
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_refuses_a_bad_token_with_403_and_no_body(server, method, path, body):
    before = raw_row(server, "authcheck")
    with httpx.Client(base_url=server.http_url, timeout=TIMEOUT) as client:
        for why, token in BAD_TOKENS.items():
            headers = {} if token is None else {"authorization": f"Bearer {token}"}
            response = client.request(method, path, json=body, headers=headers)
            assert (response.status_code, response.content) == (403, b""), why
        if method != "GET":
            read_only = {"authorization": f"Bearer {admin_token(admin='read')}"}
            response = client.request(method, path, json=body, headers=read_only)
            assert (response.status_code, response.content) == (403, b""), "read-only token writing"
    assert raw_row(server, "authcheck") == before


def test_a_token_of_the_next_secret_and_a_read_only_token_may_read(server):
    with httpx.Client(base_url=server.http_url, timeout=TIMEOUT) as client:
        for token in (admin_token(secret=NEXT_SECRET), admin_token(admin="read")):
            response = client.get("/api/tenants", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200
            assert "realtime-dev" in [t["external_id"] for t in response.json()["data"]]
        created = client.post(
            "/api/tenants",
            json=tenant("nextsecret"),
            headers={"authorization": f"Bearer {admin_token(secret=NEXT_SECRET, sub='rotated')}"},
        )
        assert created.status_code == 201, created.text


# Upsert semantics and statuses


def test_create_answers_201_with_location_then_updates_answer_200(api, server, request):
    external_id = fresh_id()
    created = no_secret(api.post("/api/tenants", json=tenant(external_id, max_concurrent_users=300)))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/api/tenants/{external_id}"
    data = created.json()["data"]
    assert (data["external_id"], data["name"], data["max_concurrent_users"]) == (external_id, external_id, 300)
    assert data["has_jwt_secret"] is True and "jwt_secret" not in data
    assert no_secret(api.get(created.headers["location"])).json()["data"] == data

    again = no_secret(api.post("/api/tenants", json={"tenant": {"external_id": external_id, "name": "Renamed"}}))
    assert again.status_code == 200
    # The fields given replace the stored ones; the others stay.
    assert (again.json()["data"]["name"], again.json()["data"]["max_concurrent_users"]) == ("Renamed", 300)

    put = no_secret(api.put(f"/api/tenants/{external_id}", json={"tenant": {"max_concurrent_users": None}}))
    assert put.status_code == 200
    plan_users = put.json()["data"]["max_concurrent_users"]
    assert put.json()["data"]["explicit_limits"] == {} and plan_users != 300  # null: the plan's (free: 200)
    assert plan_users == 200

    other = fresh_id() + "x"
    assert api.put(f"/api/tenants/{other}", json={"tenant": {"jwt_secret": SECRET}}).status_code == 201
    assert api.patch(f"/api/tenants/{other}", json={"tenant": {"private_only": True}}).json()["data"]["private_only"]
    listed = [t["external_id"] for t in no_secret(api.get("/api/tenants")).json()["data"]]
    assert {external_id, other} <= set(listed)


def test_the_running_server_serves_a_created_tenant_and_forgets_a_deleted_one(api, server, request):
    external_id = fresh_id()
    assert api.post("/api/tenants", json=tenant(external_id)).status_code == 201
    assert rest_broadcast(server, external_id).status_code == 202

    health = api.get(f"/api/tenants/{external_id}/health").json()["data"]
    assert health["healthy"] is True and health["db_connected"] is False  # no database of its own

    assert api.delete(f"/api/tenants/{external_id}").status_code == 204
    assert api.delete(f"/api/tenants/{external_id}").status_code == 204  # also when missing, as upstream
    assert raw_row(server, external_id) is None
    response = rest_broadcast(server, external_id)
    assert (response.status_code, response.json()) == (401, {"message": "Tenant not found in database"})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tenants/nosuch"),
        ("POST", "/api/tenants/nosuch/reload"),
        ("POST", "/api/tenants/nosuch/shutdown"),
        ("GET", "/api/tenants/nosuch/health"),
    ],
)
def test_a_missing_tenant_is_404_not_found(api, method, path):
    response = api.request(method, path)
    assert (response.status_code, response.json()) == (404, {"message": "not found"})


def test_settings_of_a_missing_tenant_is_404_and_creates_nothing(api, server):
    response = api.patch("/admin/v1/tenants/nosuch/settings", json={"suspend": True})
    assert (response.status_code, response.json()) == (404, {"message": "not found"})
    assert raw_row(server, "nosuch") is None


def test_the_default_tenant_cannot_be_deleted(api, server):
    response = api.delete("/api/tenants/realtime-dev")
    assert response.status_code == 422
    assert "default tenant" in response.json()["errors"]["external_id"][0]
    assert raw_row(server, "realtime-dev") is not None


# Bad bodies


BAD_BODIES = [
    ("malformed JSON", b'{"tenant": {"external_id": ', "body"),
    ("no envelope", {"external_id": "x", "jwt_secret": SECRET}, "tenant"),
    ("a string for a number", {"tenant": {"max_concurrent_users": "5"}}, "max_concurrent_users"),
    ("a float for a number", {"tenant": {"max_events_per_second": 2.5}}, "max_events_per_second"),
    ("a number for a switch", {"tenant": {"suspend": 1}}, "suspend"),
    ("null for a switch", {"tenant": {"private_only": None}}, "private_only"),
    ("an unknown field", {"tenant": {"max_users": 5}}, "max_users"),
    ("zero users", {"tenant": {"max_concurrent_users": 0}}, "max_concurrent_users"),
    ("too many joins", {"tenant": {"max_joins_per_second": 10**9}}, "max_joins_per_second"),
    ("a payload past a frame", {"tenant": {"max_payload_size_in_kb": 6_000}}, "max_payload_size_in_kb"),
    ("an unknown plan", {"tenant": {"plan": "platinum"}}, "plan"),
    ("day 29", {"tenant": {"billing_cycle_day": 29}}, "billing_cycle_day"),
    ("an ftp webhook", {"tenant": {"alert_webhook_url": "ftp://example.com/x"}}, "alert_webhook_url"),
    ("a negative price", {"tenant": {"base_fee_usd": -1}}, "base_fee_usd"),
    ("another external_id", {"tenant": {"external_id": "someone-else"}}, "external_id"),
    ("a NUL in a name", {"tenant": {"name": "a\u0000b"}}, "name"),
    ("a NUL in a JWKS", {"tenant": {"jwt_jwks": {"keys": [{"kid": "\u0000"}]}}}, "jwt_jwks"),
    ("no keys left", {"tenant": {"jwt_secret": None}}, "jwt_secret"),
    (
        "a numeric db_port",
        {"tenant": {"extensions": [{"type": "postgres_cdc_rls", "settings": {"db_port": 5432}}]}},
        "extensions.0.settings.db_port",
    ),
    (
        "an unknown extension",
        {"tenant": {"extensions": [{"type": "kafka", "settings": {}}]}},
        "extensions.0.type",
    ),
    (
        "an unknown setting",
        {"tenant": {"extensions": [{"type": "postgres_cdc_rls", "settings": {"db_hots": "x"}}]}},
        "extensions.0.settings.db_hots",
    ),
]


@pytest.mark.parametrize(("why", "body", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_bad_body_is_422_naming_the_field_and_changes_nothing(api, server, why, body, field):
    external_id = "badbodies"
    api.put(f"/api/tenants/{external_id}", json=tenant(external_id, max_concurrent_users=42))
    before = raw_row(server, external_id)
    for method in ("PUT", "PATCH"):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = api.request(
            method, f"/api/tenants/{external_id}", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (why, response.text)
        assert field in response.json()["errors"], (why, response.json())
    assert raw_row(server, external_id) == before


def test_a_new_tenant_needs_an_external_id_and_keys(api, server):
    response = api.post("/api/tenants", json={"tenant": {"jwt_secret": SECRET}})
    assert response.status_code == 422 and "external_id" in response.json()["errors"]
    response = api.post("/api/tenants", json={"tenant": {"external_id": "nokeys"}})
    assert response.json() == {"errors": {"jwt_secret": ["either jwt_secret or jwt_jwks must be provided"]}}
    response = api.post("/api/tenants", json=tenant("Upper.Case"))
    assert response.status_code == 422 and "external_id" in response.json()["errors"]
    response = api.put("/api/tenants/Upper.Case", json={"tenant": {"jwt_secret": SECRET}})
    assert response.status_code == 422 and "external_id" in response.json()["errors"]
    assert raw_row(server, "nokeys") is None and raw_row(server, "Upper.Case") is None
    assert api.get("/api/tenants/a%00b").status_code == 404
    assert api.put("/api/tenants/a%00b", json={"tenant": {"jwt_secret": SECRET}}).status_code == 422
    assert api.delete("/api/tenants/a%00b").status_code == 204


def test_an_incomplete_database_extension_is_422_per_missing_setting(api, server):
    body = tenant("halfdb", extensions=[{"type": "postgres", "settings": {"db_host": "127.0.0.1"}}])
    response = api.post("/api/tenants", json=body)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert {f"extensions.0.settings.{k}" for k in ("region", "db_port", "db_name", "db_user", "db_password")} <= set(
        errors
    )
    assert errors["extensions.0.settings.db_port"] == ["can't be blank"]
    assert raw_row(server, "halfdb") is None


# A tenant with a database of its own


def test_a_tenant_with_its_own_database_gets_migrations_services_and_loses_its_slots(api, server, pg_dsn):
    with scratch_database(pg_dsn) as dsn:
        extensions = cdc_rls(dsn, db_password=PASSWORD)
        response = no_secret(api.post("/api/tenants", json=tenant("owndb", extensions=extensions)))
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["warnings"] == []
        settings = body["data"]["extensions"][0]["settings"]
        assert body["data"]["extensions"][0]["type"] == "postgres_cdc_rls"
        assert "db_password" not in settings and settings["db_name"] == conninfo_to_dict(dsn)["dbname"]

        with psycopg.connect(dsn, autocommit=True) as conn:
            versions = [r[0] for r in conn.execute("select version from _realtime.schema_migrations")]
            assert versions and not any("tenant" in v for v in versions)  # control-only files skipped
            assert conn.execute("select to_regclass('realtime.messages')").fetchone()[0] is not None
            slots = {
                r[0]
                for r in conn.execute(
                    "select slot_name from pg_replication_slots where database = %s", (conninfo_to_dict(dsn)["dbname"],)
                )
            }
        assert slots  # database broadcast's slot

        health = api.get("/api/tenants/owndb/health").json()["data"]
        assert (health["healthy"], health["db_connected"], health["region"]) == (True, True, "local")

        # The raw row holds no plaintext secret: both are sealed.
        row = raw_row(server, "owndb")
        assert row["jwt_secret"].startswith(PREFIX) and SECRET not in json.dumps(row, default=str)
        assert row["extensions"][0]["settings"]["db_password"].startswith(PREFIX)

        # PATCH merges settings: the port is re-sent without the password, which stays.
        patched = api.patch(
            "/api/tenants/owndb",
            json={"tenant": {"extensions": [{"type": "postgres_cdc_rls", "settings": {"region": "eu"}}]}},
        )
        assert patched.status_code == 200 and patched.json()["warnings"] == [], patched.text
        assert patched.json()["data"]["extensions"][0]["settings"]["region"] == "eu"
        assert raw_row(server, "owndb")["extensions"][0]["settings"]["db_password"].startswith(PREFIX)

        assert api.post("/api/tenants/owndb/shutdown").status_code == 204
        assert api.get("/api/tenants/owndb/health").json()["data"]["db_connected"] is False
        assert api.post("/api/tenants/owndb/reload").status_code == 204
        assert api.get("/api/tenants/owndb/health").json()["data"]["db_connected"] is True

        assert api.delete("/api/tenants/owndb").status_code == 204
        with psycopg.connect(dsn, autocommit=True) as conn:
            left = conn.execute(
                "select slot_name from pg_replication_slots where database = current_database()"
            ).fetchall()
        assert left == []


def test_an_unreachable_database_is_saved_and_the_answer_says_its_services_did_not_start(api, server, request):
    extensions = [
        {
            "type": "postgres_cdc_rls",
            "settings": {
                "region": "local",
                "db_host": "127.0.0.1",
                "db_port": "1",
                "db_name": "nowhere",
                "db_user": "postgres",
                "db_password": PASSWORD,
            },
        }
    ]
    response = no_secret(api.post("/api/tenants", json=tenant("unreachable", extensions=extensions)))
    assert response.status_code == 201
    [warning] = response.json()["warnings"]
    assert "database services have not started" in warning and "background" in warning
    health = api.get("/api/tenants/unreachable/health").json()["data"]
    assert (health["healthy"], health["db_connected"]) == (False, False)
    assert api.delete("/api/tenants/unreachable").status_code == 204


# The settings endpoint


async def test_saving_settings_warns_above_studio_bounds_and_disconnects_the_clients(server):
    headers = {"authorization": f"Bearer {admin_token()}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=TIMEOUT) as api:
        await api.put("/api/tenants/settled", json=tenant("settled", plan="pro"))
        # The tenant's Host, connecting to the server's address.
        url = f"ws://settled.localhost:{server.port}/socket/websocket?vsn=2.0.0&apikey={make_token(secret=SECRET)}"
        async with websockets.connect(url, host="127.0.0.1", port=server.port) as ws:
            await ws.send(json.dumps(["1", "1", "realtime:room", "phx_join", {"config": {}}]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply[3] == "phx_reply" and reply[4]["status"] == "ok", reply
            response = await api.patch(
                "/admin/v1/tenants/settled/settings",
                json={"max_concurrent_users": 60_000, "max_joins_per_second": 100, "presence_enabled": True},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["disconnected"] == 1 and "disconnected" in body["message"]
            assert body["warnings"] == ["max_concurrent_users is 60000, above Supabase Studio's bound of 50000"]
            assert (body["data"]["max_concurrent_users"], body["data"]["presence_enabled"]) == (60_000, True)
            system = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert system[3:] == [
                "system",
                {"channel": "room", "extension": "system", "status": "ok", "message": "Server requested disconnect"},
            ]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd.code == 1012
        # One validation: the settings endpoint refuses what the tenant API refuses.
        bad = await api.patch("/admin/v1/tenants/settled/settings", json={"max_concurrent_users": 0, "suspend": 1})
        assert bad.status_code == 422 and {"max_concurrent_users", "suspend"} <= set(bad.json()["errors"])
        unknown = await api.patch("/admin/v1/tenants/settled/settings", json={"jwt_secret": "x"})
        assert unknown.status_code == 422 and "jwt_secret" in unknown.json()["errors"]
        assert (await api.get("/api/tenants/settled")).json()["data"]["max_concurrent_users"] == 60_000


async def test_reload_disconnects_the_tenants_clients_and_spares_the_others(server):
    async with httpx.AsyncClient(base_url=server.http_url, headers=admin_headers(), timeout=TIMEOUT) as api:
        await api.put("/api/tenants/reloaded", json=tenant("reloaded"))
        await api.put("/api/tenants/spared", json=tenant("spared"))
        url = f"ws://{{}}.localhost:{server.port}/socket/websocket?vsn=2.0.0&apikey={make_token(secret=SECRET)}"
        async with (
            websockets.connect(url.format("reloaded"), host="127.0.0.1", port=server.port) as reloaded,
            websockets.connect(url.format("spared"), host="127.0.0.1", port=server.port) as spared,
        ):
            assert (await api.post("/api/tenants/reloaded/reload")).status_code == 204
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(reloaded.recv(), TIMEOUT)
            assert closed.value.rcvd.code == 1012
            await spared.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))
            reply = json.loads(await asyncio.wait_for(spared.recv(), TIMEOUT))
            assert reply[3:] == ["phx_reply", {"status": "ok", "response": {}}]


def test_the_payload_bound_is_the_plans_entitlement(api):
    api.put("/api/tenants/freebie", json=tenant("freebie", plan="free"))
    body = api.patch("/admin/v1/tenants/freebie/settings", json={"max_payload_size_in_kb": 1_000}).json()
    assert body["warnings"] == ["max_payload_size_in_kb is 1000, above Supabase Studio's bound of 256"]


# Audit and documents


def test_every_write_is_audited_with_the_tokens_sub(server):
    headers = {"authorization": f"Bearer {admin_token(sub='alice@ops')}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=TIMEOUT) as api:
        assert api.post("/api/tenants", json=tenant("audited")).status_code == 201
        assert api.patch("/api/tenants/audited", json={"tenant": {"suspend": True}}).status_code == 200
        assert api.patch("/admin/v1/tenants/audited/settings", json={"suspend": False}).status_code == 200
        assert api.post("/api/tenants/audited/reload").status_code == 204
        assert api.post("/api/tenants/audited/shutdown").status_code == 204
        assert api.put("/api/tenants/audited", json={"tenant": {"max_events_per_second": 0}}).status_code == 422
        assert api.delete("/api/tenants/audited").status_code == 204
        entries = no_secret(api.get("/admin/v1/audit", params={"target": "audited"})).json()["data"]
    done = [(e["action"], e["status"], e["sub"]) for e in reversed(entries)]
    assert done == [
        ("tenant.create", 201, "alice@ops"),
        ("tenant.update", 200, "alice@ops"),
        ("tenant.settings", 200, "alice@ops"),
        ("tenant.reload", 204, "alice@ops"),
        ("tenant.shutdown", 204, "alice@ops"),
        ("tenant.update", 422, "alice@ops"),
        ("tenant.delete", 204, "alice@ops"),
    ]
    assert entries[-1]["detail"]["fields"] == ["external_id", "jwt_secret"]  # names, never values


def test_the_tenant_api_document_lists_every_route(api):
    document = api.get("/api/openapi").json()
    paths = document["paths"]
    assert set(paths["/api/tenants"]) == {"get", "post"}
    assert set(paths["/api/tenants/{tenant_id}"]) == {"get", "put", "patch", "delete"}
    assert {
        "/api/tenants/{tenant_id}/reload",
        "/api/tenants/{tenant_id}/shutdown",
        "/api/tenants/{tenant_id}/health",
    } <= set(paths)
    schema = document["components"]["schemas"]["TenantOut"]
    assert "jwt_secret" not in schema["properties"]
    admin = api.get("/admin/v1/openapi.json").json()
    assert "patch" in admin["paths"]["/admin/v1/tenants/{tenant_id}/settings"]
